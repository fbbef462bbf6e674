//! `pgwebhooks demo`, the real binary: Ctrl-C after a round is a normal
//! stop (exit 0, "stopped", the throwaway cluster removed), and the output
//! to a pipe is a plain log that fits in 100 columns; a reader that goes
//! away stops it as Ctrl-C does. Without the server binaries it installs
//! them first, or names the command that does.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo's cluster directories (`<tmp>/pgwebhooks-demo-<pid>-<rand>`).
fn clusters_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("pgwebhooks-demo-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

#[test]
fn ctrl_c_after_a_round_stops_cleanly_with_exit_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .arg("demo")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgwebhooks demo");
    let pid = child.id();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("utf-8 output")).is_err() {
                break;
            }
        }
        // The channel closes when stdout does: the demo has exited.
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = |out: &mut Vec<String>| -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        out.push(line.clone());
        Some(line)
    };
    loop {
        match next(&mut out) {
            Some(l) if l.contains("round 1:") => break,
            Some(_) => {}
            None => {
                let _ = child.kill();
                panic!(
                    "no round finished within 60 s; output so far:\n{}",
                    out.join("\n")
                );
            }
        }
    }
    let clusters = clusters_of(pid);
    assert_eq!(
        clusters.len(),
        1,
        "one throwaway cluster while it runs: {clusters:?}"
    );

    let kill = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    while next(&mut out).is_some() {}
    assert!(
        Instant::now() < deadline,
        "the demo did not exit within 60 s of starting; output:\n{}",
        out.join("\n")
    );
    let status = child.wait().expect("wait for the demo");
    let stderr = errors.join().expect("stderr reader");
    let text = out.join("\n");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stdout:\n{text}\nstderr:\n{stderr}"
    );
    assert!(text.contains("stopped"), "says it stopped:\n{text}");
    assert!(!text.contains('✗'), "a stop is not a failure:\n{text}");
    assert!(text.contains("cumulative totals"), "labels its table:\n{text}");
    assert!(
        !clusters[0].exists(),
        "the cluster directory {} is removed on exit",
        clusters[0].display()
    );
    for line in &out {
        assert!(
            line.chars().count() <= 100,
            "line of {} characters: {line}",
            line.chars().count()
        );
        assert!(!line.contains('\x1b'), "escape code in piped output: {line:?}");
    }
}

/// `pgwebhooks demo | head -1`: the demo stops as on Ctrl-C (cluster
/// removed, exit 0) when its reader goes away, instead of panicking.
#[test]
fn the_demo_stops_cleanly_when_its_reader_goes_away() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The BufReader, and with it the pipe's read end, is dropped here.
    assert!(first.contains("starting a throwaway PostgreSQL"), "{first}");
    let mut stderr = child.stderr.take().unwrap();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((child.wait().unwrap(), err));
    });
    let (status, err) = done
        .recv_timeout(Duration::from_secs(60))
        .expect("the demo exits within 60 s of its reader going away");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(clusters_of(pid).is_empty(), "the throwaway cluster is removed");
}

/// A test's scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "pgwebhooks-{what}-{}-{:04x}",
            std::process::id(),
            fastrand::u16(..)
        ));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        Scratch(dir)
    }

    /// An executable shell script `bin/<name>`.
    fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join("bin").join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A stand-in `apt-get` that records its arguments (and the
    /// DEBIAN_FRONTEND it got) in `apt-get.log`, and whose `install` puts
    /// the real server binaries where Debian's package does, under
    /// `lib/postgresql/<version>/bin` here.
    fn apt_get(&self) {
        let real = pgwebhooks::localpg::find("initdb").expect("the server binaries on this machine");
        let real = real.parent().unwrap().display().to_string();
        let dir = self.0.display();
        self.script(
            "apt-get",
            &format!(
                "echo \"$DEBIAN_FRONTEND $*\" >> '{dir}/apt-get.log'\n\
                 if [ \"$1\" = install ]; then mkdir -p '{dir}/lib/postgresql/15/bin' && \
                 ln -s '{real}'/* '{dir}/lib/postgresql/15/bin/'; fi"
            ),
        );
    }

    /// Searching this directory alone: `bin` as PATH, `lib/postgresql`.
    fn search(&self) -> pgwebhooks::localpg::Search {
        pgwebhooks::localpg::Search {
            path: self.0.join("bin").into_os_string(),
            roots: vec![self.0.join("lib/postgresql")],
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("apt-get.log")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The demo's plain log, kept for the test.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Issue #25: on a machine with no server binaries where `apt-get` and
/// root are there, the demo says what it runs, installs the server and
/// goes on to a real, passing round. (The `apt-get` is a stand-in that
/// links this machine's binaries where Debian's package puts them; the
/// code that finds and runs it is the one `pgwebhooks demo` runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_installs_a_missing_server_then_runs_a_real_round() {
    let scratch = Scratch::new("install");
    scratch.apt_get();
    let search = scratch.search();
    assert!(search.find("initdb").is_err(), "no server to begin with");
    let log = Log::default();
    let setup = pgwebhooks::demo::Setup {
        search,
        root: true,
        out: Some(Box::new(log.clone())),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(120),
        pgwebhooks::demo::run_with(setup, true, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the demo ends within 120 s")
    .unwrap_or_else(|e| panic!("{e}\n{}", log.text()));
    let text = log.text();
    assert_eq!(outcome, pgwebhooks::demo::Outcome::Passed, "{text}");
    assert_eq!(
        scratch.log(),
        "noninteractive update\nnoninteractive install -y postgresql\n",
        "apt-get update, then install, non-interactive"
    );
    let apt = scratch.0.join("bin/apt-get").display().to_string();
    let said: Vec<&str> = text.lines().take(3).collect();
    assert_eq!(
        said,
        [
            format!("▶ PostgreSQL server binaries not found; installing them: {apt} update"),
            format!("▶ PostgreSQL server binaries not found; installing them: {apt} install -y postgresql"),
            "▶ PostgreSQL server installed".to_owned(),
        ],
        "each command said before it runs:\n{text}"
    );
    assert!(
        text.contains("✓ round 1: ") && text.contains("callback 200"),
        "a real round:\n{text}"
    );
}

/// Where the demo cannot install the server, it runs nothing and its error
/// names the one command that does it; without root, a password-less sudo
/// runs the same commands.
#[tokio::test]
async fn where_the_demo_cannot_install_the_server_it_names_the_command() {
    use pgwebhooks::localpg::install;
    let scratch = Scratch::new("no-install");
    let search = scratch.search();

    // No apt-get: not Debian or Ubuntu.
    let err = install::plan(&search, true).unwrap_err().to_string();
    assert!(
        err.contains("not Debian or Ubuntu") && err.contains("initdb and pg_ctl on PATH"),
        "{err}"
    );

    // apt-get, but neither root nor sudo: the demo stops, running nothing.
    scratch.apt_get();
    let log = Log::default();
    let setup = pgwebhooks::demo::Setup {
        search: search.clone(),
        root: false,
        out: Some(Box::new(log.clone())),
    };
    let err = pgwebhooks::demo::run_with(setup, true, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not root and sudo cannot run without a password")
            && err.contains("\n    sudo apt-get update && sudo apt-get install -y postgresql\n"),
        "{err}"
    );
    assert_eq!(scratch.log(), "", "nothing was run");
    assert!(!log.text().contains("starting a throwaway"), "{}", log.text());

    // A sudo that asks for no password: the same commands, through it.
    scratch.script(
        "sudo",
        &format!(
            "echo \"sudo $*\" >> '{}/apt-get.log'\n[ \"$1\" = -n ] && shift\nexec \"$@\"",
            scratch.0.display()
        ),
    );
    let steps = install::plan(&search, false).unwrap();
    for step in &steps {
        step.run().unwrap();
    }
    install::check(&search, &steps).unwrap();
    let (sudo, apt) = (
        scratch.0.join("bin/sudo").display().to_string(),
        scratch.0.join("bin/apt-get").display().to_string(),
    );
    assert_eq!(
        steps.iter().map(|s| s.shown()).collect::<Vec<_>>(),
        [
            format!("{sudo} -n env DEBIAN_FRONTEND=noninteractive {apt} update"),
            format!("{sudo} -n env DEBIAN_FRONTEND=noninteractive {apt} install -y postgresql"),
        ]
    );
    assert!(
        scratch.log().ends_with(&format!(
            "sudo -n env DEBIAN_FRONTEND=noninteractive {apt} update\nnoninteractive update\n\
             sudo -n env DEBIAN_FRONTEND=noninteractive {apt} install -y postgresql\nnoninteractive install -y postgresql\n"
        )),
        "{}",
        scratch.log()
    );
    assert!(
        install::plan(&search, false).unwrap().is_empty(),
        "installed: nothing more to run"
    );
}
