//! `isle check-config` on the real binary: the layers (file, environment,
//! flags) in their order, durations with units, and errors that say where
//! the bad value came from, all without starting a server.

use std::{path::Path, process::Command};

/// Runs `isle check-config ARGS` with `env` set (and no other `ISLE_*`
/// variable): its exit status's success, stdout and stderr.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_isle"));
    command.arg("check-config").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("ISLE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("running isle check-config");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (
        output.status.success(),
        text(output.stdout),
        text(output.stderr),
    )
}

/// The value of `key` (under `[section]`, or at the top for "") in
/// check-config's output.
fn value_of(output: &str, section: &str, key: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(output).expect("check-config prints TOML");
    let table = match section {
        "" => &table,
        _ => table.get(section)?.as_table()?,
    };
    Some(table.get(key)?.to_string())
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("isle.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn flags_override_the_environment_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "shards = 3\ncpus = [1]\n[limits]\nsend_burst = 10\nidle_timeout_ms = 1000\n",
    );
    let env = [("ISLE_SHARDS", "4"), ("ISLE_LIMITS__SEND_BURST", "20")];
    let (ok, out, err) = check_config(&["--config", &file], &env);
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "", "shards").as_deref(), Some("4"));
    assert_eq!(value_of(&out, "", "cpus").as_deref(), Some("[1]"));
    assert_eq!(
        value_of(&out, "limits", "send_burst").as_deref(),
        Some("20")
    );
    assert_eq!(
        value_of(&out, "limits", "idle_timeout_ms").as_deref(),
        Some("1000")
    );
    let (ok, out, err) = check_config(&["--config", &file, "--shards", "5"], &env);
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "", "shards").as_deref(), Some("5"));
    let layers = format!(
        "# layers: defaults, then file {file}, then environment ISLE_LIMITS__SEND_BURST \
         ISLE_SHARDS, then flags --shards"
    );
    assert!(out.lines().any(|l| l == layers), "{out}");
}

#[test]
fn durations_take_units_from_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "[storage]\nsync_delay_ms = \"1s\"\n");
    let env = [("ISLE_CLOCK__SETTLE_MS", "15m")];
    let flags = ["--config", &file, "--idle-timeout-ms", "90s"];
    let (ok, out, err) = check_config(&flags, &env);
    assert!(ok, "{err}");
    assert_eq!(
        value_of(&out, "storage", "sync_delay_ms").as_deref(),
        Some("1000")
    );
    assert_eq!(
        value_of(&out, "clock", "settle_ms").as_deref(),
        Some("900000")
    );
    assert_eq!(
        value_of(&out, "limits", "idle_timeout_ms").as_deref(),
        Some("90000")
    );
    // Plain milliseconds, as every flag and key always took.
    let (ok, out, _) = check_config(&["--idle-timeout-ms", "1500", "--sync-delay-ms", "7"], &[]);
    assert!(ok);
    assert_eq!(
        value_of(&out, "limits", "idle_timeout_ms").as_deref(),
        Some("1500")
    );
    assert_eq!(
        value_of(&out, "storage", "sync_delay_ms").as_deref(),
        Some("7")
    );
}

#[test]
fn a_bad_value_is_refused_alike_from_each_layer_and_named_where_it_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let seven = "the test code must be six digits";
    let file = write_config(
        dir.path(),
        "[test_numbers]\nprefix = \"+1555\"\ncode = 1234567\n",
    );
    let from_file = check_config(&["--config", &file], &[]);
    let from_env = check_config(&[], &[("ISLE_TEST_NUMBERS", "+1555:1234567")]);
    let from_flag = check_config(&["--test-numbers", "+1555:1234567"], &[]);
    for ((ok, out, err), source) in [
        (from_file, "from config "),
        (from_env, "from environment variable ISLE_TEST_NUMBERS"),
        (from_flag, "from flag --test-numbers"),
    ] {
        assert!(!ok, "accepted: {out}");
        assert!(err.contains(seven) && err.contains(source), "{err}");
        assert!(out.is_empty(), "{out}");
    }
    let (ok, _, err) = check_config(&["--idle-timeout-ms", "soon"], &[]);
    assert!(!ok);
    assert!(
        err.contains("flag --idle-timeout-ms: \"soon\" is not a duration"),
        "{err}"
    );
    let (ok, _, err) = check_config(&[], &[("ISLE_LIMITS__SEND_BURST", "0")]);
    assert!(!ok);
    assert!(
        err.contains("from environment variable ISLE_LIMITS__SEND_BURST"),
        "{err}"
    );
    assert!(err.contains("send_burst is 0"), "{err}");
    let (ok, _, err) = check_config(&[], &[("ISLE_LIMITS__SEND_BURTS", "5")]);
    assert!(!ok);
    assert!(
        err.contains("ISLE_LIMITS__SEND_BURTS: unknown field `send_burts`"),
        "{err}"
    );
    // The file is read on its own first: toml says on which line.
    let file = write_config(dir.path(), "shards = 2\n[storage]\nsalvage = 3\n");
    let (ok, _, err) = check_config(&["--config", &file], &[]);
    assert!(!ok);
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn check_config_starts_nothing_and_ignores_variables_of_other_tools() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = [
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let (ok, out, err) = check_config(&flags, &[("ISLE_CRASH_ROUNDS", "3")]);
    assert!(ok, "{err}");
    assert!(!data.exists(), "check-config made the data dir");
    assert!(out.contains("# ignored: ISLE_CRASH_ROUNDS"), "{out}");
    assert!(
        err.contains("ISLE_CRASH_ROUNDS names no configuration key"),
        "{err}"
    );
    // The flags the tests start the server with are a valid configuration.
    let flags = [
        "--no-tls",
        "--plaintext-listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--test-numbers",
        "+1555:111111",
        "--segment-bytes",
        "1048576",
    ];
    let (ok, out, err) = check_config(&flags, &[]);
    assert!(ok, "{err}");
    assert_eq!(value_of(&out, "", "listen"), None);
    assert_eq!(
        value_of(&out, "test_numbers", "code").as_deref(),
        Some("111111")
    );
}

/// What the server could not run with is refused before it starts, each
/// with the key at fault: a queue or ring sized 0 (a panic at start), a
/// tick so long a stop would wait for it, timeouts of 0, an empty admin
/// token (which would let anyone in), and an admin listener off loopback
/// with no token.
#[test]
fn values_the_server_cannot_run_with_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[limits]\nio_ring_depth = 0\n", "limits.io_ring_depth"),
        (
            "[limits]\npeer_queue_batches_max = 0\n",
            "limits.peer_queue_batches_max",
        ),
        ("[limits]\ntick_ms = \"1h\"\n", "limits.tick_ms"),
        ("[limits]\nidle_timeout_ms = 0\n", "limits.idle_timeout_ms"),
        (
            "[limits]\nlogin_timeout_ms = 0\n",
            "limits.login_timeout_ms",
        ),
        ("[admin]\ntoken = \"\"\n", "admin.token"),
        ("[admin]\nlisten = \"0.0.0.0:9410\"\n", "admin.listen"),
    ];
    for (text, key) in cases {
        let file = write_config(dir.path(), text);
        let (ok, _, err) = check_config(&["--config", &file], &[]);
        assert!(!ok, "{text:?} passed");
        assert!(err.contains(key), "{text:?}: {err}");
    }
    let (ok, _, err) = check_config(
        &["--admin-listen", "0.0.0.0:9410", "--admin-token", ""],
        &[],
    );
    assert!(!ok && err.contains("admin.token"), "{err}");
}

/// A free loopback port (bound and released).
fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a case is called, its flags, its environment.
type Case<'a> = (&'a str, Vec<String>, Vec<(&'a str, String)>);

/// `check-config` is the unit's `ExecStartPre`: what it passes, the
/// server must start with. The server cannot start with any of these (or
/// would die right after its ready line), so check-config refuses them.
#[test]
fn check_config_refuses_what_the_server_refuses_to_start_with() {
    let port = free_loopback_port();
    let same = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not used").unwrap();
    let cases: [Case; 5] = [
        (
            "admin.listen is plaintext_listen",
            vec![
                "--no-tls".into(),
                "--plaintext-listen".into(),
                same.clone(),
                "--admin-listen".into(),
                same.clone(),
            ],
            vec![],
        ),
        (
            "tls.cert without tls.key (the server: \"must be set together\")",
            vec![],
            vec![("ISLE_TLS__CERT", cert.to_str().unwrap().to_owned())],
        ),
        (
            "io_ring_depth past io_uring's 32768 (the server: EINVAL after its ready line)",
            vec![],
            vec![("ISLE_LIMITS__IO_RING_DEPTH", "65536".to_owned())],
        ),
        (
            "an empty data_dir (the server: \"resolving data dir : No such file\")",
            vec![],
            vec![("ISLE_DATA_DIR", String::new())],
        ),
        (
            "a CPU the machine does not have",
            vec!["--cpus".into(), "4095".into()],
            vec![],
        ),
    ];
    let mut passed = Vec::new();
    for (what, args, env) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, _, _) = check_config(&args, &env);
        if ok {
            passed.push(*what);
        }
    }
    assert!(
        passed.is_empty(),
        "check-config passed configurations the server cannot start with: {passed:?}"
    );
}

/// The TLS listener and the plaintext listener on one address: both
/// sockets are bound with SO_REUSEPORT, so the kernel splits connections
/// between them and about half of the phones' TLS handshakes land on the
/// plaintext listener. The server refuses this (check-config too), as it
/// refuses an address another process listens on.
#[test]
fn the_tls_and_plaintext_listeners_cannot_share_an_address() {
    let port = free_loopback_port();
    let same = format!("127.0.0.1:{port}");
    let (ok, _, _) = check_config(&["--listen", &same, "--plaintext-listen", &same], &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_isle"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "--shards", "1"])
        .args(["--listen", &same, "--plaintext-listen", &same])
        .args(["--admin-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    use std::io::BufRead;
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first_line);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !ok && !first_line.contains("isle ready"),
        "one address for both listeners: check-config passed: {ok}; the server said {first_line:?}"
    );
}
