//! The exact user-facing text of parse errors (what an admin sees in a hook log).

use classad::stream::parse_hook_stream;
use classad::{parse_expr, parse_old_ad, Syntax};

#[test]
fn unclosed_paren_in_old_ad() {
    let err = parse_old_ad("Cmd = \"/bin/true\"\nRequirements = (Memory > 1024\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2, column 30: in attribute Requirements: expected ')', found end of input\n  | Requirements = (Memory > 1024\n  |                              ^"
    );
}

#[test]
fn bad_attribute_name() {
    let err = parse_old_ad("A = 1\n9lives = 2\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2, column 1: attribute name \"9lives\" is not an identifier (letters, digits and '_', not starting with a digit)\n  | 9lives = 2\n  | ^"
    );
}

#[test]
fn unterminated_string_in_expression() {
    let err = parse_expr("strcat(\"abc, 1)", Syntax::New).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1, column 8: string or quoted name is not closed\n  | strcat(\"abc, 1)\n  |        ^"
    );
}

#[test]
fn hook_stream_error_names_the_ad() {
    let err = parse_hook_stream("[ Name = \"VM\" ]\n------\nA = 1\nB = 1 +\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "ad 2 of the hook input: line 4, column 8: in attribute B: expected an expression, found end of input\n  | B = 1 +\n  |        ^"
    );
}

#[test]
fn nesting_limit() {
    let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
    let err = parse_expr(&deep, Syntax::New).unwrap_err();
    assert!(err.to_string().contains("nested deeper than"), "{err}");
    let chain = vec!["a"; 5000].join(" && ");
    assert!(parse_expr(&chain, Syntax::New).is_err());
    let ok_chain = vec!["a"; 400].join(" && ");
    assert!(parse_expr(&ok_chain, Syntax::New).is_ok());
}
