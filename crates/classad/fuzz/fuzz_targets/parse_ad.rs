//! Any text fed to the ad parsers (old, new, hook stream) must give an ad or an error, never a
//! panic; an ad that parses must print and parse back to the same ad.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = classad::stream::parse_hook_stream(text);
    if let Ok(ads) = classad::parse_ads(text) {
        for ad in ads {
            let new_text = classad::print::ad_to_new_string(&ad);
            let again = classad::parse_new_ad(&new_text).expect("our new-syntax output parses");
            assert_eq!(
                classad::print::ad_to_new_string(&again),
                new_text,
                "new syntax is not stable"
            );
            if let Ok(old_text) = classad::print::ad_to_old_string(&ad) {
                classad::parse_old_ad(&old_text).expect("our old-syntax output parses");
            }
        }
    }
});
