//! The `[log]` table of `lb.toml`: where the access log goes (`access`:
//! off, stdout or a file) and in which format (`format`: combined or
//! json). A file is opened here once, in append mode, so a path the
//! balancer cannot write is a config error naming it (at start, at
//! `--check`, and on SIGHUP, where the running log is then kept).

use std::fs::OpenOptions;
use std::path::PathBuf;

use super::raw::RawLog;
use super::{err, Check};

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    /// Where each request's line goes.
    pub access: Access,
    /// How a line is written.
    pub format: Format,
}

/// `[log] access`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Access {
    /// No access log: a request pays one branch for it.
    #[default]
    Off,
    /// Standard output (for journald, docker, a pipe).
    Stdout,
    /// A file, opened in append mode and reopened on SIGHUP (logrotate).
    File(PathBuf),
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Apache/nginx combined, with the balancer's fields appended as
    /// `key=value`.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
pub(super) fn log(raw: &RawLog) -> Check<Log> {
    let access = match &raw.access {
        None => Access::Off,
        Some(s) => match s.get_ref().as_str() {
            "off" => Access::Off,
            "stdout" => Access::Stdout,
            "" => {
                return err(
                    s.span(),
                    "[log] access: empty; valid: \"off\", \"stdout\" or a file path".into(),
                )
            }
            path => {
                if let Err(e) = OpenOptions::new().append(true).create(true).open(path) {
                    return err(
                        s.span(),
                        format!("[log] access: cannot open {path:?} for appending: {e}"),
                    );
                }
                Access::File(PathBuf::from(path))
            }
        },
    };
    let format = match &raw.format {
        None => Format::Combined,
        Some(s) => match s.get_ref().as_str() {
            "combined" => Format::Combined,
            "json" => Format::Json,
            other => {
                return err(
                    s.span(),
                    format!("[log] format: unknown format {other:?}; valid: combined, json"),
                )
            }
        },
    };
    Ok(Log { access, format })
}

impl super::Config {
    /// The `[log]` line of `--check`'s summary.
    pub(super) fn log_summary(&self) -> String {
        let format = match self.log.format {
            Format::Combined => "combined",
            Format::Json => "json",
        };
        match &self.log.access {
            Access::Off => "access log off".into(),
            Access::Stdout => format!("access log to stdout, {format}"),
            Access::File(p) => format!("access log to {}, {format}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Access, Config, Format};

    fn parse(log: &str) -> Result<Config, String> {
        let text =
            format!("listen = \"127.0.0.1:8080\"\nbackends = [\"127.0.0.1:9\"]\n[log]\n{log}\n");
        Config::parse(&text, Path::new("lb.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off_and_combined() {
        let c = parse("").unwrap();
        assert_eq!(c.log.access, Access::Off);
        assert_eq!(c.log.format, Format::Combined);
        let c = parse("access = \"stdout\"\nformat = \"json\"").unwrap();
        assert_eq!(c.log.access, Access::Stdout);
        assert_eq!(c.log.format, Format::Json);
    }

    #[test]
    fn a_file_is_opened_at_load_and_errors_name_it() {
        let dir = std::env::temp_dir().join(format!("lb-log-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("access.log");
        let c = parse(&format!("access = {:?}", file.to_str().unwrap())).unwrap();
        assert_eq!(c.log.access, Access::File(file.clone()));
        assert!(file.exists(), "opened (created) at load");

        let missing = dir.join("no/such/dir/access.log");
        let e = parse(&format!("access = {:?}", missing.to_str().unwrap())).unwrap_err();
        assert!(e.contains("lb.toml:4:10"), "{e}");
        assert!(
            e.contains("[log] access: cannot open") && e.contains("no/such/dir"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_valid_ones() {
        let e = parse("format = \"clf\"").unwrap_err();
        assert!(
            e.contains("[log] format") && e.contains("valid: combined, json"),
            "{e}"
        );
        let e = parse("access = \"\"").unwrap_err();
        assert!(
            e.contains("[log] access") && e.contains("\"stdout\""),
            "{e}"
        );
        let e = parse("acces = \"stdout\"").unwrap_err();
        assert!(e.contains("acces"), "{e}");
    }
}
