//! HTCondor ClassAds: lexer, parser, printer and evaluator.
#![forbid(unsafe_code)]
