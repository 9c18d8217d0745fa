//! `vm-capsule ad`: print ClassAds canonically and evaluate expressions, with HTCondor's rules.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use classad::print::{ad_to_hook_string, ad_to_new_string, ad_to_old_string};
use classad::stream::parse_hook_stream;
use classad::{eval, parse_ads, parse_expr, ClassAd, Syntax};

/// ClassAd tools.
#[derive(Debug, Subcommand)]
pub enum AdCommand {
    /// Read one or more ads (old or new syntax, or a hook stream with `------` separators)
    /// and print them canonically.
    Fmt(FmtArgs),
    /// Evaluate an expression, optionally in the scope of an ad, and print the value in new
    /// syntax.
    Eval(EvalArgs),
}

/// Arguments of `ad fmt`.
#[derive(Debug, Args)]
pub struct FmtArgs {
    /// Old ("long") syntax, one `Name = value` per line, as `condor_q -long` (default).
    #[arg(long, group = "format")]
    old: bool,
    /// New syntax, one `[ ... ]` ad per line.
    #[arg(long, group = "format")]
    new: bool,
    /// Old syntax sorted by name, as the JobRouter writes ads to hooks.
    #[arg(long, group = "format")]
    hook: bool,
    /// Input file (default: standard input).
    file: Option<PathBuf>,
}

/// Arguments of `ad eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The expression (new syntax); it may start with `-` (`-7 / 2`).
    #[arg(allow_hyphen_values = true)]
    expr: String,
    /// An ad file (old or new syntax) whose attributes are in scope.
    #[arg(long)]
    ad: Option<PathBuf>,
}

/// Run an `ad` subcommand.
pub fn run(cmd: AdCommand) -> Result<ExitCode> {
    match cmd {
        AdCommand::Fmt(args) => fmt(&args),
        AdCommand::Eval(args) => eval_cmd(&args),
    }
}

/// Read a file or stdin, with a limit, as UTF-8 text.
fn read_input(file: Option<&PathBuf>) -> Result<(String, String)> {
    let (name, mut reader): (String, Box<dyn Read>) = match file {
        Some(p) => (
            p.display().to_string(),
            Box::new(
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
            ),
        ),
        None => ("<stdin>".to_owned(), Box::new(std::io::stdin())),
    };
    let limit = classad::stream::MAX_STREAM_BYTES;
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {name}"))?;
    anyhow::ensure!(bytes.len() <= limit, "{name}: larger than {limit} bytes");
    let text = String::from_utf8(bytes).with_context(|| format!("{name}: not UTF-8 text"))?;
    Ok((name, text))
}

/// Ads from text: a hook stream when it has separator lines, else plain old/new ads.
fn read_ads(name: &str, text: &str) -> Result<Vec<ClassAd>> {
    let is_stream = text
        .lines()
        .any(|l| l.trim_end_matches('\r') == classad::stream::SEPARATOR);
    if is_stream {
        let ads = parse_hook_stream(text).with_context(|| format!("{name}: cannot parse"))?;
        return Ok(ads.into_iter().map(|s| s.ad).collect());
    }
    parse_ads(text).with_context(|| format!("{name}: cannot parse"))
}

fn fmt(args: &FmtArgs) -> Result<ExitCode> {
    let (name, text) = read_input(args.file.as_ref())?;
    let ads = read_ads(&name, &text)?;
    let mut out = String::new();
    for (i, ad) in ads.iter().enumerate() {
        if args.new {
            out.push_str(&ad_to_new_string(ad));
            out.push('\n');
            continue;
        }
        if i > 0 {
            out.push('\n');
        }
        let printed = if args.hook {
            ad_to_hook_string(ad)
        } else {
            ad_to_old_string(ad)
        };
        out.push_str(&printed.with_context(|| format!("{name}: ad {} cannot be printed", i + 1))?);
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn eval_cmd(args: &EvalArgs) -> Result<ExitCode> {
    let expr = parse_expr(&args.expr, Syntax::New)
        .with_context(|| format!("cannot parse expression {:?}", args.expr))?;
    let ad = match &args.ad {
        Some(path) => {
            let (name, text) = read_input(Some(path))?;
            let mut ads = read_ads(&name, &text)?;
            anyhow::ensure!(!ads.is_empty(), "{name}: no ad found");
            // With several ads (a hook stream), the last is the job ad.
            ads.pop().unwrap_or_default()
        }
        None => ClassAd::new(),
    };
    let value = eval::evaluate(&expr, &ad);
    writeln!(std::io::stdout().lock(), "{value}")?;
    Ok(ExitCode::SUCCESS)
}
