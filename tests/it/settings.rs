//! Every setting, given a malformed, empty, out-of-range or conflicting value, stops
//! `orrery serve` with exit code 2 and one line naming it — never a panic.

use std::process::Command;

use crate::helpers::SECRET;

/// Bad values for every flag of `orrery serve --help`.
const BAD: &[(&str, &[&str])] = &[
    ("config", &["/nonexistent/orrery.toml"]),
    (
        "nats-url",
        &[
            "",
            " ",
            "not a url",
            "nats://127.0.0.1:4222,,",
            "nats://h:99999999",
        ],
    ),
    ("nats-user", &["alice"]),
    ("nats-password", &["secret"]),
    ("nats-token", &["", "   "]),
    ("nats-creds", &["/nonexistent/user.creds"]),
    (
        "nats-nkey",
        &[
            "",
            "UABC",
            "SUshort",
            "SU!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ],
    ),
    ("nats-tls-ca", &["/nonexistent/ca.pem"]),
    ("nats-tls-cert", &["/nonexistent/cert.pem"]),
    ("nats-tls-key", &["/nonexistent/key.pem"]),
    ("stream-replicas", &["0", "6", "-1", "three", ""]),
    ("stream-max-age", &["0s", "3651d", "soon", "", "-1d"]),
    ("provision-streams", &["maybe", "2", "yes"]),
    ("snapshot-bucket", &["", "a.b", "snaps>", "has space"]),
    ("snapshot-interval-secs", &["0", "604801", "x"]),
    ("snapshot-keep", &["0", "101", "-3"]),
    ("database", &[""]),
    ("readers", &["0", "257", "many", "-1"]),
    (
        "cache-mib",
        &["0", "1", "65537", "big", "-1", "99999999999"],
    ),
    ("listen", &["", "nowhere", "127.0.0.1:99999", "127.0.0.1"]),
    ("jwt-secret", &["", "short"]),
    ("jwt-secret-file", &["/nonexistent/secret"]),
    ("insecure-no-auth", &["maybe", "2"]),
    (
        "auth-issuer",
        &["http://idp.example", "idp", "ftp://idp.example"],
    ),
    ("auth-jwks-url", &["http://idp.example/jwks", "nope"]),
    // Alone, each of these is refused for want of a provider; with one, the unit tests
    // of config::auth walk their values.
    ("auth-audience", &["orrery", ""]),
    ("auth-role-claim", &["a..b", "groups"]),
    ("auth-roles", &["ops=root", "ops=admin"]),
    ("auth-jwks-cooldown-secs", &["0", "3601", "x"]),
    ("auth-ca", &["/nonexistent/ca.pem"]),
    ("auth-client-id", &["dash"]),
    ("batch-size", &["0", "100001", "big"]),
    ("batch-wait-ms", &["10001", "-5", "soon"]),
    ("ready-max-lag", &["1000000001", "-1", "x"]),
    ("sse-keepalive-secs", &["0", "3601", "x"]),
    ("sse-max-streams-per-user", &["0", "1000001", "x"]),
    ("sse-max-connections", &["0", "1000001", "x"]),
    ("sse-client-queue", &["0", "1000001", "x"]),
    ("sse-replay-events", &["0", "1000001", "x"]),
    (
        "cors-origins",
        &[
            "*,https://a.example",
            "ftp://a.example",
            "https://a.example/app",
        ],
    ),
    ("mutation-wait-ms", &["0", "60001", "x"]),
    ("drain-delay-ms", &["300001", "-1", "x"]),
    ("alert-stale-after-secs", &["0", "2592001", "x"]),
    ("agent-stale-after-secs", &["0", "2592001", "x"]),
    ("fleet-stale-share", &["-0.1", "1.5", "NaN", "inf", "x"]),
    ("fleet-max-lag", &["1000000001", "-1", "x"]),
    ("expect-streams", &["a.b", "has space", "RESULTS,>"]),
    ("expect-kv", &["a/b", "*"]),
    ("expect-object-stores", &["a.b"]),
    ("heartbeat-interval-secs", &["0", "86401", "x"]),
    ("sample-retention-secs", &["59", "0", "2592001", "x"]),
    ("deploy-history-keep", &["0", "100001", "x"]),
    ("results-retention-secs", &["315360001", "-1", "1e9", "x"]),
    ("alerts-retention-secs", &["315360001", "-1", "x"]),
    ("mutations-retention-secs", &["315360001", "-1", "x"]),
    ("dead-letters-retention-secs", &["315360001", "-1", "x"]),
    (
        "work-items-retention-secs",
        &["18446744073709551616", "-1", "x"],
    ),
    ("log-format", &["xml", ""]),
];

/// Runs `orrery serve` with `--flag=value` (or the `ORRERY_…` variable) on top of settings
/// that would otherwise get as far as opening a database that cannot exist.
fn serve(flag: &str, value: &str, by_env: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orrery"));
    cmd.arg("serve")
        .env_remove("ORRERY_CONFIG")
        .env("RUST_LOG", "off");
    if !flag.starts_with("jwt-secret") {
        cmd.args(["--jwt-secret", SECRET]);
    }
    if flag != "database" {
        cmd.args(["--database", "/nonexistent/dir/never-opened.db"]);
    }
    if by_env {
        cmd.env(
            format!("ORRERY_{}", flag.to_uppercase().replace('-', "_")),
            value,
        );
    } else {
        cmd.arg(format!("--{flag}={value}"));
    }
    cmd.output().unwrap()
}

#[test]
fn every_setting_refuses_bad_values_with_exit_code_2_and_one_line_naming_it() {
    // The table covers every flag there is.
    let help = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '=']).next().unwrap())
        .filter(|f| *f != "help")
        .collect();
    assert!(flags.len() >= 40, "{flags:?}");
    for flag in &flags {
        assert!(
            BAD.iter().any(|(f, _)| f == flag),
            "--{flag} has no bad values in the table"
        );
    }

    let mut checked = 0;
    for (flag, values) in BAD {
        for value in *values {
            // Environment variables cannot hold an empty value that means anything else.
            for by_env in [false, true] {
                if by_env && *flag == "config" {
                    continue;
                }
                let out = serve(flag, value, by_env);
                let stderr = String::from_utf8_lossy(&out.stderr);
                let how = if by_env { "env" } else { "flag" };
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "--{flag}={value:?} ({how}): {stderr}"
                );
                assert!(!stderr.contains("panicked"), "--{flag}={value:?}: {stderr}");
                assert_eq!(
                    stderr.trim().lines().count(),
                    1,
                    "--{flag}={value:?} ({how}): not one line: {stderr}"
                );
                let named = match *flag {
                    "config" => stderr.contains("config file"),
                    "nats-user" | "nats-password" => {
                        stderr.contains("--nats-user and --nats-password")
                    }
                    "nats-tls-cert" | "nats-tls-key" => {
                        stderr.contains("--nats-tls-cert and --nats-tls-key")
                    }
                    "jwt-secret" | "jwt-secret-file" => stderr.contains("JWT secret"),
                    _ => {
                        stderr.contains(&format!("--{flag}"))
                            || stderr.contains(&format!("'--{flag}"))
                    }
                };
                assert!(
                    named,
                    "--{flag}={value:?} ({how}): does not name it: {stderr}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "{checked}");
}

/// Runs `orrery probe` with `args` against the daemon listening on `listen`.
fn probe(listen: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .arg("probe")
        .args(args)
        .env_remove("ORRERY_CONFIG")
        .env("ORRERY_LISTEN", listen)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_0_when_ready_1_naming_what_it_heard_else_and_2_for_bad_arguments() {
    let nats = orrery::natsd::NatsServer::start().unwrap();
    let app = crate::helpers::spawn_app(&nats).await;
    app.wait_caught_up().await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    // A wildcard listen address, as in the image, is probed on its loopback.
    let listen = format!("0.0.0.0:{port}");
    for args in [&[][..], &["ready"], &["health"]] {
        let out = tokio::task::block_in_place(|| probe(&listen, args));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(stdout.contains("answered 200"), "{stdout}");
    }

    // Not ready: /ready's reasons reach the health check's output.
    drop(nats);
    let started = std::time::Instant::now();
    let out = loop {
        let out = tokio::task::block_in_place(|| probe(&listen, &["ready"]));
        if out.status.code() == Some(1) || started.elapsed() > std::time::Duration::from_secs(30) {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("answered 503") && stderr.contains("reasons"),
        "{stderr}"
    );
    // Liveness does not look at the bus.
    let health = tokio::task::block_in_place(|| probe(&listen, &["health"]));
    assert_eq!(health.status.code(), Some(0), "{health:?}");
    app.stop().await;

    // Nobody listening: exit 1 with one line naming the address.
    let free = orrery::natsd::free_port().unwrap();
    let out = probe(&format!("127.0.0.1:{free}"), &["--timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{free}/ready did not answer")),
        "{stderr}"
    );

    for bad in [
        &["--timeout", "0s"][..],
        &["--timeout", "soon"],
        &["--timeout", "2h"],
        &["live"],
    ] {
        let out = probe(&listen, bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{bad:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
