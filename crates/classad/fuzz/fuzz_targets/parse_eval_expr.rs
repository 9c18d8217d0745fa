//! Any expression text must parse or fail cleanly, and anything that parses must print and
//! evaluate without panicking (unknown functions, type errors and cycles are `error`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for syntax in [classad::Syntax::New, classad::Syntax::Old] {
        if let Ok(expr) = classad::parse_expr(text, syntax) {
            let printed = classad::print::expr_to_string(&expr, classad::Syntax::New);
            classad::parse_expr(&printed, classad::Syntax::New).expect("our output parses");
            let scope = classad::parse_old_ad("a = 1\nb = \"x\"\nc = a + 1\nd = { 1, 2 }\n")
                .expect("scope ad");
            let _ = classad::eval::evaluate(&expr, &scope);
        }
    }
});
