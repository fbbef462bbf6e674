//! Installing the PostgreSQL server when the demo finds none, as `.ci/run`
//! does: on Debian or Ubuntu, `apt-get update` then `apt-get install -y
//! postgresql`, as root or through `sudo -n` (which never asks for a
//! password). Where that cannot work, nothing is run and the error names
//! the one command that does it.
//!
//! The programs are found through a [`Search`] (the real one: this
//! process's `PATH` and /usr/lib/postgresql), so a test can give one whose
//! `PATH` holds a stand-in `apt-get`; the code that runs it is the same.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{LocalPgError, Search};

/// One command of an install: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step(pub Vec<OsString>);

impl Step {
    /// The command as printed before it runs.
    pub fn shown(&self) -> String {
        self.0
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs it, its output on stderr (stdout is the demo's screen).
    pub fn run(&self) -> Result<(), LocalPgError> {
        let (program, args) = self.0.split_first().expect("a step names a program");
        let status = Command::new(program)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .map_err(|e| LocalPgError::InstallFailed {
                command: self.shown(),
                detail: format!("could not be started: {e}"),
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(LocalPgError::InstallFailed {
                command: self.shown(),
                detail: format!("failed ({status})"),
            })
        }
    }
}

/// The steps that install the server here (none when `initdb` and
/// `pg_ctl` are found already), or why it cannot be done and the command
/// that does it. `root`: this process runs as root; if not, the steps go
/// through `sudo -n`, tried once first (`sudo -n true`).
pub fn plan(search: &Search, root: bool) -> Result<Vec<Step>, LocalPgError> {
    if search.find("initdb").is_ok() && search.find("pg_ctl").is_ok() {
        return Ok(Vec::new());
    }
    let Some(apt) = search.on_path("apt-get") else {
        return Err(LocalPgError::CannotInstall {
            why: "this is not Debian or Ubuntu (no apt-get on PATH), where the demo knows how".into(),
            command: "your system's PostgreSQL server package (e.g. `brew install postgresql@17`, \
                      `dnf install postgresql-server`), with initdb and pg_ctl on PATH"
                .into(),
        });
    };
    let steps = |prefix: &[OsString]| {
        [vec!["update"], vec!["install", "-y", "postgresql"]]
            .into_iter()
            .map(|args| {
                let mut v = prefix.to_vec();
                v.push(apt.clone().into_os_string());
                v.extend(args.into_iter().map(OsString::from));
                Step(v)
            })
            .collect()
    };
    if root {
        return Ok(steps(&[]));
    }
    let sudo = search.on_path("sudo").filter(|s| sudo_without_password(s));
    match sudo {
        // (sudo resets the environment: `env` sets the one setting apt needs.)
        Some(sudo) => Ok(steps(&[
            sudo.into_os_string(),
            "-n".into(),
            "env".into(),
            "DEBIAN_FRONTEND=noninteractive".into(),
        ])),
        None => Err(LocalPgError::CannotInstall {
            why: "this process is not root and sudo cannot run without a password".into(),
            command: "sudo apt-get update && sudo apt-get install -y postgresql".into(),
        }),
    }
}

/// `sudo -n true` succeeds: sudo runs without asking for a password.
fn sudo_without_password(sudo: &Path) -> bool {
    Command::new(sudo)
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// After the steps ran: the binaries are where `search` looks.
pub fn check(search: &Search, steps: &[Step]) -> Result<(), LocalPgError> {
    match (search.find("initdb"), search.find("pg_ctl")) {
        (Ok(_), Ok(_)) => Ok(()),
        _ => Err(LocalPgError::InstallFailed {
            command: steps.iter().map(Step::shown).collect::<Vec<_>>().join(" && "),
            detail:
                "succeeded, but initdb and pg_ctl are still neither on PATH nor in /usr/lib/postgresql/*/bin"
                    .into(),
        }),
    }
}
