//! `pgwebhooks demo`, the real binary: Ctrl-C after a round is a normal
//! stop (exit 0, "stopped", the throwaway cluster removed), and the output
//! to a pipe is a plain log that fits in 100 columns; a reader that goes
//! away stops it as Ctrl-C does.

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
