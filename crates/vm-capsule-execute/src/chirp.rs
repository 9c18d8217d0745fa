//! A minimal Chirp client: how a running vanilla job updates its own job ad through the
//! starter (`WantIOProxy = true`; the starter writes `.chirp.config` into the sandbox).
//!
//! The vanilla flavour's launcher uses it to publish what the guest measured of the job itself
//! (HTCondor's `RemoteUserCpu` and memory figures are the launcher's: boot and emulation
//! included). Only the commands needed are spoken: `cookie`, `set_job_attr` and `set_job_attr_delayed`, one line
//! each, answered by a line holding a number (0: success), as HTCondor's `htchirp` does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// Longest request line a Chirp server accepts.
const LINE_MAX: usize = 5120;
/// Connect, read and write timeout.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why an update did not reach the job ad.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChirpError {
    /// No Chirp configuration (the job did not ask for `WantIOProxy`).
    #[error("no Chirp configuration at {0} (the routed job sets WantIOProxy = true)")]
    NoConfig(String),
    /// The configuration is not `host port cookie`.
    #[error("the Chirp configuration {0} is not `host port cookie`")]
    BadConfig(String),
    /// Network trouble.
    #[error("Chirp connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused a command.
    #[error("the Chirp server answered {code} to {command}")]
    Refused {
        /// The command's first word.
        command: String,
        /// Its answer.
        code: String,
    },
}

/// A connected, authenticated Chirp session.
#[derive(Debug)]
pub struct Chirp {
    stream: BufReader<TcpStream>,
}

/// Escape a word as Chirp's simple commands require: backslash, space, tab, CR and LF.
fn quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if matches!(c, '\\' | ' ' | '\n' | '\t' | '\r') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Chirp {
    /// Connect with the configuration the starter wrote: `config` (the job's
    /// `_CONDOR_CHIRP_CONFIG`), else `.chirp.config` in `sandbox`.
    ///
    /// # Errors
    /// [`ChirpError`].
    pub fn from_sandbox(sandbox: &Path, config: Option<&Path>) -> Result<Chirp, ChirpError> {
        let path = config.map_or_else(|| sandbox.join(".chirp.config"), Path::to_owned);
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(&path).map_err(|_| ChirpError::NoConfig(shown.clone()))?;
        let words: Vec<&str> = text.split_whitespace().collect();
        let [host, port, cookie] = words.as_slice() else {
            return Err(ChirpError::BadConfig(shown));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| ChirpError::BadConfig(shown.clone()))?;
        Chirp::connect(host, port, cookie)
    }

    /// Connect to `host:port` and authenticate with `cookie`.
    ///
    /// # Errors
    /// [`ChirpError`].
    pub fn connect(host: &str, port: u16, cookie: &str) -> Result<Chirp, ChirpError> {
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut chirp = Chirp {
            stream: BufReader::new(stream),
        };
        chirp.command("cookie", &format!("cookie {}\n", quote(cookie)))?;
        Ok(chirp)
    }

    /// Set attribute `name` of the job's ad to the ClassAd expression `value`.
    ///
    /// # Errors
    /// [`ChirpError`].
    pub fn set_job_attr(&mut self, name: &str, value: &str) -> Result<(), ChirpError> {
        let line = format!("set_job_attr {} {}\n", quote(name), quote(value));
        if line.len() > LINE_MAX {
            return Err(ChirpError::Refused {
                command: "set_job_attr".to_owned(),
                code: "too long".to_owned(),
            });
        }
        self.command("set_job_attr", &line)
    }

    /// Set attribute `name` through the starter's delayed updates (`set_job_attr_delayed`),
    /// which a job gets without `WantIOProxy` (the starter takes only names its
    /// `CHIRP_DELAYED_UPDATE_PREFIX` allows, `Chirp*` by default).
    ///
    /// # Errors
    /// [`ChirpError`].
    pub fn set_job_attr_delayed(&mut self, name: &str, value: &str) -> Result<(), ChirpError> {
        let line = format!("set_job_attr_delayed {} {}\n", quote(name), quote(value));
        if line.len() > LINE_MAX {
            return Err(ChirpError::Refused {
                command: "set_job_attr_delayed".to_owned(),
                code: "too long".to_owned(),
            });
        }
        self.command("set_job_attr_delayed", &line)
    }

    fn command(&mut self, command: &str, line: &str) -> Result<(), ChirpError> {
        self.stream.get_mut().write_all(line.as_bytes())?;
        let mut answer = String::new();
        // An answer is a number on one line; a longer line is not Chirp.
        (&mut self.stream).take(64).read_line(&mut answer)?;
        match answer.trim() {
            "0" => Ok(()),
            code => Err(ChirpError::Refused {
                command: command.to_owned(),
                code: code.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_escaped_as_htchirp_does() {
        assert_eq!(quote("a b\\c\nd"), "a\\ b\\\\c\\\nd");
        assert_eq!(
            quote("\"exited with code 3\""),
            "\"exited\\ with\\ code\\ 3\""
        );
    }
}
