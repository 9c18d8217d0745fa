//! capsule.json and result.json from arbitrary bytes: no panic, and whatever parses must
//! survive a print/parse round trip unchanged.
#![no_main]

use capsule_manifest::{JobResult, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_json(data) {
        let again = m.to_json().expect("a parsed manifest is valid");
        assert_eq!(Manifest::from_json(&again).expect("reparse"), m);
    }
    if let Ok(r) = JobResult::from_json(data) {
        let again = r.to_json().expect("a parsed result is valid");
        assert_eq!(JobResult::from_json(&again).expect("reparse"), r);
    }
});
