//! Finds the outside tools some integration tests drive, so that a test
//! whose tool is missing is compiled as ignored (`cargo test` lists it as
//! ignored, with the reason) instead of passing without testing anything.
//! `.ci/run` installs every tool and sets PGWEBHOOKS_REQUIRE_TOOLS, so
//! there a missing tool fails the build instead.

use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    for var in ["PATH", "VIRTUAL_ENV", "PGWEBHOOKS_REQUIRE_TOOLS"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let tools: [(&str, &str, &[&str], &str); 6] = [
        ("have_openssl", "openssl", &["version"], "apt-get install openssl"),
        (
            "have_schemathesis",
            "schemathesis",
            &["--version"],
            "pip install schemathesis",
        ),
        (
            "have_standardwebhooks",
            "python3",
            &["-c", "import standardwebhooks"],
            "pip install standardwebhooks",
        ),
        (
            "have_selenium",
            "python3",
            &["-c", "import selenium"],
            "pip install selenium",
        ),
        // Not a tool: the full-disk test mounts a small tmpfs.
        (
            "have_root",
            "sh",
            &["-c", "test \"$(id -u)\" = 0"],
            "run the tests as root",
        ),
        (
            "have_chromedriver",
            "chromedriver",
            &["--version"],
            "apt-get install chromium chromium-driver",
        ),
    ];
    let required = std::env::var_os("PGWEBHOOKS_REQUIRE_TOOLS").is_some();
    for (cfg, program, args, install) in tools {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let present = Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        if present {
            println!("cargo::rustc-cfg={cfg}");
        } else if required {
            panic!("PGWEBHOOKS_REQUIRE_TOOLS is set but `{program}` is missing: {install}");
        } else {
            println!(
                "cargo::warning=tests needing `{program}` are ignored: {install}, then `touch build.rs`"
            );
        }
    }
}
