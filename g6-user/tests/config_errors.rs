//! The configuration API on real files: what `g6 -f FILE` and `--check` print.

use std::path::{Path, PathBuf};

use g6::config::{self, ConfigError};

/// Writes `content` to `name` in a fresh temporary directory.
fn write_conf(name: &str, content: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write config");
    (dir, path)
}

fn load_err(path: &Path) -> ConfigError {
    match config::load_file(path) {
        Ok(cfg) => panic!("{} should be rejected, parsed {cfg:?}", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.conf");
    let e = load_err(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: error: cannot open: No such file or directory (os error 2)",
            path.display()
        )
    );
    assert_eq!((e.line(), e.col()), (None, None));
}

#[test]
fn directory_is_not_a_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = load_err(dir.path());
    assert_eq!(
        e.to_string(),
        format!(
            "{}: error: cannot open: Is a directory (os error 21)",
            dir.path().display()
        )
    );
}

#[test]
fn bad_port_full_diagnostic() {
    let (_dir, path) = write_conf(
        "G6.conf",
        b"// admin\nadmin G 127.0.0.1:* - 127.0.0.1:8600 ;\nr1 RR *:* -\n    127.0.0.1:83601 > 127.0.0.1:1 ;\n",
    );
    let e = load_err(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{}:4:5: error: invalid port '83601' (1..65535)",
            path.display()
        )
    );
    assert_eq!((e.line(), e.col()), (Some(4), Some(5)));
}

#[test]
fn unterminated_rule_reports_end_of_file() {
    let (_dir, path) = write_conf("u.conf", b"r1 RR *:* - 127.0.0.1:80 > 127.0.0.1:81\r\n");
    assert_eq!(
        load_err(&path).to_string(),
        format!(
            "{}:2:1: error: expected server address, '(' or ';', found end of file",
            path.display()
        )
    );
}

#[test]
fn duplicates_name_the_first_occurrence() {
    let (_dir, path) = write_conf("d.conf", b"a G - 127.0.0.1:80 ;\nb G - ;\n  a G - ;\n");
    assert_eq!(
        load_err(&path).to_string(),
        format!(
            "{}:3:3: error: duplicate rule id 'a' (first at 1:1)",
            path.display()
        )
    );
    let (_dir, path) = write_conf(
        "l.conf",
        b"a G - 127.0.0.1:80 ;\nb RR *:* -\n [::1]:80 127.0.0.1:80 > ;",
    );
    assert_eq!(
        load_err(&path).to_string(),
        format!(
            "{}:3:11: error: duplicate listen address 127.0.0.1:80 (first at 1:7)",
            path.display()
        )
    );
}

#[test]
fn long_token_and_binary_garbage_are_errors() {
    let mut src = b"a G - ;\n".to_vec();
    src.extend(std::iter::repeat_n(b'x', 10_000));
    let (_dir, path) = write_conf("long.conf", &src);
    assert_eq!(
        load_err(&path).to_string(),
        format!(
            "{}:2:1: error: token longer than 64 bytes '{}'",
            path.display(),
            "x".repeat(64)
        )
    );
    // Any word is a rule id (SPEC.md §9.6 renders invalid UTF-8 in ids as U+FFFD).
    let (_dir, path) = write_conf("bin.conf", b"\xfe\xff \x00\x01\xfe (");
    assert_eq!(
        load_err(&path).to_string(),
        format!(
            "{}:1:4: error: expected algorithm (G, MS, RR, LC, RT, RD or HS), found '\\x00\\x01\u{fffd}'",
            path.display()
        )
    );
}

#[test]
fn valid_file_summary_and_warnings() {
    let (_dir, path) = write_conf(
        "ok.conf",
        b"(timeout=1m);\nadmin G 127.0.0.1:* - 127.0.0.1:8600 ;\nempty RR *:* - 127.0.0.1:8601 > ;\n",
    );
    let cfg = config::load_file(&path).expect("valid");
    let label = path.display().to_string();
    assert_eq!(
        config::check_summary(&label, &cfg),
        format!("{label}: ok, 2 rules, 2 listen addresses, 0 server entries")
    );
    let warnings: Vec<_> = cfg
        .warnings
        .iter()
        .map(|w| config::format_warning(&label, w))
        .collect();
    assert_eq!(
        warnings,
        [format!(
            "{label}:3:1: warning: rule 'empty' has no servers: its clients are refused"
        )]
    );
    assert_eq!(cfg.rules[1].listens[0].timeout, 60);
}

#[test]
fn shipped_sample_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/G6.conf");
    let cfg = config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(
        config::check_summary("etc/G6.conf", &cfg),
        "etc/G6.conf: ok, 2 rules, 2 listen addresses, 2 server entries"
    );
}
