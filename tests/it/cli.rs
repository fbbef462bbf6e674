//! What the command line says when something is wrong (#14.5, #14.7): the
//! real binary, its stderr read as a user would.

use std::process::Command;

use crate::support::TestDb;

/// Runs `pgwebhooks args…` with `env` (DATABASE_URL unset unless given).
fn pgwebhooks(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGWEBHOOKS_CONFIG")
        .env_remove("PGWEBHOOKS_ENDPOINT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_db(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    pgwebhooks(args, &[("DATABASE_URL", &db.url())])
}

#[tokio::test]
async fn an_unmigrated_database_says_run_migrate() {
    let db = TestDb::empty().await;
    for args in [&["status"][..], &["endpoint", "list"], &["retry", "--dead"]] {
        let (ok, _, err) = with_db(&db, args);
        assert!(!ok, "{args:?}");
        assert!(err.contains("run `pgwebhooks migrate`"), "{args:?}: {err}");
        assert!(
            !err.contains("relation") && !err.contains("db error"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: said once: {err}");
    }
}

#[test]
fn an_unreachable_database_names_where_and_why() {
    let (ok, _, err) = pgwebhooks(
        &["status"],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x")],
    );
    assert!(!ok);
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains("127.0.0.1:1") && err.contains("db x"), "{err}");
    assert!(err.contains("is Postgres running?"), "{err}");
    assert!(
        !err.contains("Error occurred while creating a new object"),
        "{err}"
    );
    assert!(
        !err.contains("db error") && !err.contains("error connecting to server"),
        "{err}"
    );
    assert!(!err.contains("nobody"), "no user name or password: {err}");
}

#[test]
fn an_invalid_database_url_says_why() {
    for (url, reason) in [
        (
            "postgres://u:hunter2@h:port/db",
            "invalid value for option `port`",
        ),
        (
            "host=h frobnicate=1 password=hunter2",
            "unknown option `frobnicate`",
        ),
    ] {
        let (ok, _, err) = pgwebhooks(&["status"], &[("DATABASE_URL", url)]);
        assert!(!ok);
        assert!(
            err.contains("invalid DATABASE_URL") && err.contains(reason),
            "{url}: {err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(err.matches("DATABASE_URL").count(), 1, "said once: {err}");
        assert!(!err.contains("invalid database URL"), "said once: {err}");
    }
}

#[test]
fn an_empty_database_url_says_it_is_empty() {
    for args in [&["status"][..], &["migrate"], &["endpoint", "list"], &["run"]] {
        for url in ["", "  "] {
            let (ok, _, err) = pgwebhooks(args, &[("DATABASE_URL", url)]);
            assert!(!ok, "{args:?}");
            assert!(
                err.contains("DATABASE_URL is set but empty")
                    && err.contains("export DATABASE_URL=postgres://"),
                "{args:?} {url:?}: {err}"
            );
            assert!(
                !err.contains("localhost") && !err.contains("hostaddr"),
                "{args:?}: {err}"
            );
        }
    }
}

#[test]
fn a_url_without_a_host_is_refused() {
    for url in ["http:///nohost", "https:///x/y"] {
        let (ok, _, err) = pgwebhooks(
            &["endpoint", "add", "--url", url, "--allow-private-targets"],
            &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x")],
        );
        assert!(!ok);
        assert!(
            err.contains("invalid --url") && err.contains("no host"),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn a_duplicate_endpoint_name_says_which_endpoint_has_it() {
    let db = TestDb::new().await;
    let add = [
        "endpoint",
        "add",
        "--url",
        "http://127.0.0.1:9/a",
        "--allow-private-targets",
        "--name",
        "crm",
    ];
    let (ok, out, err) = with_db(&db, &add);
    assert!(ok, "{err}");
    let id = out.lines().last().unwrap().trim().to_owned();
    let (ok, _, err) = with_db(&db, &add);
    assert!(!ok);
    assert!(
        err.contains(&format!("an endpoint named \"crm\" already exists (id {id})")),
        "{err}"
    );
    assert!(err.contains("another --name"), "{err}");
    assert!(
        !err.contains("duplicate key") && !err.contains("db error"),
        "{err}"
    );
}

#[test]
fn an_environment_variable_that_does_not_parse_is_named() {
    let (ok, _, err) = pgwebhooks(&["run"], &[("PGWEBHOOKS_TIMEOUT", "abc")]);
    assert!(!ok);
    assert!(
        err.contains("PGWEBHOOKS_TIMEOUT: invalid duration 'abc'"),
        "{err}"
    );
    assert!(!err.contains("'--timeout <TIMEOUT>'"), "{err}");
    let (_, _, err) = pgwebhooks(&["run"], &[("PGWEBHOOKS_BATCH_SIZE", "0")]);
    assert!(
        err.contains("PGWEBHOOKS_BATCH_SIZE") && err.contains("1..=10000"),
        "{err}"
    );
    let (_, _, err) = pgwebhooks(&["status"], &[("PGWEBHOOKS_LOG_FORMAT", "xml")]);
    assert!(
        err.contains("PGWEBHOOKS_LOG_FORMAT: invalid value 'xml'"),
        "{err}"
    );
    // A flag on the command line is named as the flag.
    let (ok, _, err) = pgwebhooks(&["run", "--timeout", "1x"], &[("PGWEBHOOKS_TIMEOUT", "abc")]);
    assert!(!ok);
    assert!(
        err.contains("--timeout") && !err.contains("PGWEBHOOKS_TIMEOUT"),
        "{err}"
    );
}

/// docs/configuration.md says `pgwebhooks run --help` lists every
/// variable: each one named there must be in it.
#[test]
fn run_help_lists_every_variable_of_docs_configuration() {
    let section = configuration_page();
    let section = section.as_str();
    assert!(section.starts_with("# Configuration\n"));
    assert!(section.contains("`pgwebhooks run --help` lists every variable"));
    let (ok, help, err) = pgwebhooks(&["run", "--help"], &[]);
    assert!(ok, "{err}");
    let mut names: Vec<&str> = Vec::new();
    for (i, _) in section.match_indices(['P', 'D', 'M']) {
        let word: &str = {
            let rest = &section[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len())]
        };
        let prefixed = ["PGWEBHOOKS_", "MAKE_WEBHOOK_"]
            .iter()
            .any(|p| word.starts_with(p) && word.len() > p.len());
        let boundary =
            i == 0 || !section.as_bytes()[i - 1].is_ascii_alphanumeric() && section.as_bytes()[i - 1] != b'_';
        if boundary && (prefixed || word == "DATABASE_URL") && !word.ends_with('_') {
            names.push(word);
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() > 25, "found {names:?}");
    let missing: Vec<&&str> = names.iter().filter(|n| !help.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "in docs/configuration.md, not in `run --help`: {missing:?}"
    );
}

#[tokio::test]
async fn endpoint_delete_is_refused_while_deliveries_wait_unless_forced() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let add = [
        "endpoint",
        "add",
        "--url",
        "http://127.0.0.1:9/a",
        "--allow-private-targets",
        "--name",
        "old",
    ];
    let (ok, out, err) = with_db(&db, &add);
    assert!(ok, "{err}");
    let id: i64 = out.lines().last().unwrap().trim().parse().unwrap();
    let delivery_ids: Vec<i64> = c
        .query(
            "WITH e AS (SELECT webhooks.emit('order.created', jsonb_build_object('n', n)) AS event_id, n
                          FROM generate_series(1, 3) n)
             INSERT INTO webhooks.deliveries (event_id, endpoint_id, status, next_attempt_at)
             SELECT event_id, $1, (ARRAY['pending', 'dead', 'delivered'])[n], now() FROM e
             RETURNING id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let (ok, _, err) = with_db(&db, &["endpoint", "delete", &id.to_string()]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "endpoint {id} not deleted: 2 deliveries wait (1 pending, 1 dead)"
        )),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM webhooks.deliveries WHERE endpoint_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 3, "nothing changed");

    let (ok, out, err) = with_db(&db, &["endpoint", "delete", "--force", &id.to_string()]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("endpoint {id} deleted, with its 3 deliveries")),
        "{out}"
    );
    assert!(
        out.contains("dropped 2 waiting deliveries (1 pending, 1 dead"),
        "{out}"
    );
    let record: serde_json::Value = c
        .query_one(
            "SELECT payload FROM webhooks.events WHERE event_type = 'webhooks.endpoint.deleted'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(record["endpointId"], id);
    assert_eq!(record["endpointName"], "old");
    assert_eq!(record["dropped"], 2);
    assert_eq!(record["droppedByStatus"]["dead"], 1);
    assert_eq!(record["firstDeliveryIds"], serde_json::json!(delivery_ids[..2]));
    assert!(
        record["deletedBy"].is_string() && record["deletedAt"].is_string(),
        "{record}"
    );

    let (ok, _, err) = with_db(&db, &["endpoint", "delete", &id.to_string()]);
    assert!(!ok && err.contains(&format!("no endpoint {id}")), "{err}");
}

#[tokio::test]
async fn endpoint_delete_without_waiting_deliveries_needs_no_force() {
    let db = TestDb::new().await;
    let add = [
        "endpoint",
        "add",
        "--url",
        "http://127.0.0.1:9/a",
        "--allow-private-targets",
    ];
    let (ok, out, err) = with_db(&db, &add);
    assert!(ok, "{err}");
    let id = out.lines().last().unwrap().trim().to_owned();
    let (ok, out, err) = with_db(&db, &["endpoint", "delete", &id]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("endpoint {id} deleted, with its 0 deliveries")),
        "{out}"
    );
    let c = db.client().await;
    let events: i64 = c
        .query_one("SELECT count(*) FROM webhooks.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 0, "nothing dropped, nothing recorded");
}

/// #16.7: logs carry no ANSI colour codes unless stderr is a terminal (a
/// file, a pipe or `kubectl logs` reads plain text).
#[tokio::test]
async fn logs_to_a_pipe_have_no_colour_codes() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::new().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"))
        .arg("run")
        .env("DATABASE_URL", db.url())
        .env("PGWEBHOOKS_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_ADMIN_LISTEN", "127.0.0.1:0")
        .env("PGWEBHOOKS_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("PGWEBHOOKS_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read on a thread, bounded: the sidecar runs until killed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("sidecar started")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen.iter().any(|l| l.contains("sidecar started")), "{seen:#?}");
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "colour codes in piped logs: {seen:#?}"
    );
}

/// `pgwebhooks run --help`'s variables and defaults.
fn help_variables() -> Vec<(String, Option<String>)> {
    let (ok, out, err) = pgwebhooks(&["run", "--help"], &[]);
    assert!(ok, "{err}");
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut vars = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("[env: ") {
        rest = &rest[at + 6..];
        let end = rest.find(['=', ']']).unwrap();
        let name = rest[..end].to_owned();
        rest = &rest[end..];
        let close = rest.find(']').unwrap();
        rest = &rest[close + 1..];
        let default = rest
            .trim_start()
            .strip_prefix("[default: ")
            .map(|d| d[..d.find(']').unwrap()].to_owned());
        vars.push((name, default));
    }
    vars
}

/// docs/configuration.md, the configuration reference the README links to.
fn configuration_page() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap()
}

/// docs/configuration.md's table: `PGWEBHOOKS_…` variable → default as
/// written (`—` or a description when there is none).
fn documented_variables() -> Vec<(String, String)> {
    let page = configuration_page();
    let table = page
        .split("\n\n")
        .find(|block| block.starts_with("| variable | default |"))
        .expect("its table");
    let mut vars = Vec::new();
    for row in table.lines().skip(2) {
        let cells: Vec<&str> = row.split(" | ").map(|c| c.trim_matches(['|', ' '])).collect();
        let names: Vec<&str> = cells[0].split(" / ").map(|n| n.trim_matches('`')).collect();
        let defaults: Vec<&str> = cells[1].split(" / ").map(|d| d.trim_matches('`')).collect();
        let first = names[0];
        for (i, name) in names.iter().enumerate() {
            // `PGWEBHOOKS_BREAKER_FAILURES` / `_WINDOW`: the first's prefix.
            let name = match name.strip_prefix('_') {
                Some(suffix) => format!("{}_{suffix}", &first[..first.rfind('_').unwrap()]),
                None => name.to_string(),
            };
            if name.starts_with("PGWEBHOOKS_") {
                let default = defaults.get(i).or(defaults.first()).unwrap();
                vars.push((name, default.to_string()));
            }
        }
    }
    vars
}

/// docs/configuration.md's table and `run --help` say the same: every
/// variable of one is in the other, with the same default.
#[test]
fn the_documented_configuration_table_matches_run_help() {
    let help = help_variables();
    let documented = documented_variables();
    assert!(
        help.len() >= 20 && documented.len() >= 20,
        "{help:?} {documented:?}"
    );
    // Read by the logger, before the command line: not `run`'s flags.
    let not_flags = ["PGWEBHOOKS_LOG"];
    for (name, default) in &documented {
        if not_flags.contains(&name.as_str()) {
            continue;
        }
        let Some((_, help_default)) = help.iter().find(|(n, _)| n == name) else {
            panic!("docs/configuration.md lists {name}, `run --help` does not");
        };
        if let Some(d) = help_default {
            assert_eq!(
                default, d,
                "{name}: docs/configuration.md says {default}, --help {d}"
            );
        }
    }
    for (name, default) in &help {
        if name == "DATABASE_URL" || name == "PGWEBHOOKS_CONFIG" {
            continue; // described above the table and in its first row
        }
        let Some((_, documented_default)) = documented.iter().find(|(n, _)| n == name) else {
            panic!("`run --help` has {name}, docs/configuration.md's table does not");
        };
        if let Some(d) = default {
            assert_eq!(documented_default, d, "{name}");
        }
    }
}

/// Runs `pgwebhooks args…` with stdout a pipe whose reader is already
/// gone (as in `pgwebhooks status | head -0`): every write gets EPIPE.
/// Returns the exit status and stderr.
fn with_stdout_closed(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwebhooks"));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("PGWEBHOOKS_CONFIG")
        .stdout(writer);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_closed_stdout_ends_every_command_quietly() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str())];
    let (ok, _, err) = pgwebhooks(
        &[
            "endpoint",
            "add",
            "--url",
            "http://127.0.0.1:9/a",
            "--allow-private-targets",
        ],
        &env,
    );
    assert!(ok, "{err}");
    for args in [
        &["status"][..],
        &["endpoint", "list"],
        &["migrate"],
        &["retry", "--dead"],
        &["--help"],
        &["status", "--help"],
    ] {
        let (status, err) = with_stdout_closed(args, &env);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_ne!(status.code(), Some(101), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: quietly: {err}");
        assert!(status.success(), "{args:?}: {status:?}");
    }
    // A command's own failure is still one (the pipe is not all it says).
    let (status, err) = with_stdout_closed(&["endpoint", "disable", "999"], &env);
    assert!(!status.success() && err.contains("no endpoint 999"), "{err}");
}
