//! Layering, validation and the documented defaults.

use super::*;

fn secure() -> Settings {
    Settings {
        jwt_secret: Some("x".repeat(32)),
        ..Default::default()
    }
}

#[test]
fn defaults_match_the_design() {
    let c = secure().resolve().unwrap();
    assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
    assert_eq!(c.database, PathBuf::from("./orrery.db"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
}

#[test]
fn missing_or_weak_secret_is_an_error_unless_auth_is_disabled() {
    let err = Settings::default().resolve().unwrap_err().to_string();
    assert!(err.contains("no JWT secret"), "{err}");
    let weak = Settings {
        jwt_secret: Some("short".into()),
        ..Default::default()
    };
    assert!(weak.resolve().unwrap_err().to_string().contains("5 bytes"));
    let dev = Settings {
        insecure_no_auth: Some(true),
        ..Default::default()
    };
    assert!(dev.resolve().unwrap().jwt_secret.is_none());
}

#[test]
fn flags_win_over_file_and_unknown_keys_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.toml");
    std::fs::write(&path, "database = \"file.db\"\nbatch_size = 10\n").unwrap();
    let c = Settings {
        config: Some(path.clone()),
        batch_size: Some(99),
        ..secure()
    }
    .resolve()
    .unwrap();
    assert_eq!(c.database, PathBuf::from("file.db"));
    assert_eq!(c.batch_size, 99);

    std::fs::write(&path, "databse = \"typo.db\"\n").unwrap();
    let err = Settings {
        config: Some(path),
        ..secure()
    }
    .resolve()
    .unwrap_err();
    assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
}

/// `orrery serve`'s options, for parsing flags as the CLI would.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

/// Settings that are simply absent unless given: credentials, files and the secret.
const OPTIONAL: [&str; 12] = [
    "config",
    "nats-user",
    "nats-password",
    "nats-token",
    "nats-creds",
    "nats-nkey",
    "nats-tls-ca",
    "nats-tls-cert",
    "nats-tls-key",
    "jwt-secret",
    "jwt-secret-file",
    "auth-ca",
];

#[test]
fn every_documented_default_is_the_value_used() {
    use clap::CommandFactory;
    let secret = "x".repeat(32);
    // A provider, so that the --auth-* defaults are resolved too.
    let resolve = |args: &[&str]| {
        let mut argv = vec![
            "orrery",
            "--jwt-secret",
            &secret,
            "--auth-issuer",
            "https://idp.example",
            "--auth-audience",
            "orrery",
        ];
        argv.extend_from_slice(args);
        let cli = <Cli as clap::Parser>::try_parse_from(&argv).unwrap();
        format!("{:?}", cli.settings.resolve().unwrap())
    };
    let implicit = resolve(&[]);
    let mut checked = Vec::new();
    for arg in Cli::command().get_arguments() {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let long = arg.get_long().unwrap();
        let Some((_, rest)) = help.split_once("[default: ") else {
            assert!(
                OPTIONAL.contains(&long),
                "--{long} documents no [default: …] and is not optional by nature"
            );
            continue;
        };
        let value = rest.split(']').next().unwrap();
        if value == "none" {
            continue;
        }
        let flag = format!("--{long}");
        assert_eq!(
            resolve(&[&flag, value]),
            implicit,
            "{flag}: the documented default {value} is not the one used"
        );
        checked.push(flag);
    }
    assert!(checked.len() >= 24, "{checked:?}");
}

#[test]
fn the_example_config_file_parses() {
    let text = include_str!("../../orrery.example.toml");
    let file: Settings = toml::from_str(text).unwrap();
    assert_eq!(file.batch_size, Some(super::DEFAULT_BATCH_SIZE));
}

#[test]
fn secret_is_not_debug_printed() {
    let c = secure().resolve().unwrap();
    assert!(!format!("{c:?}").contains("xxxxxxxx"));
}

#[test]
fn cors_takes_a_star_alone_or_origins_and_names_a_bad_one() {
    let cors = |v: &str| {
        Settings {
            cors_origins: Some(v.into()),
            ..secure()
        }
        .resolve()
        .map(|c| c.cors)
        .map_err(|e| format!("{e:#}"))
    };
    assert_eq!(cors("*"), Ok(Cors::Any));
    assert_eq!(cors(" "), Ok(Cors::Off));
    assert_eq!(
        cors("https://dash.example, http://127.0.0.1:3000,http://[::1]:8080"),
        Ok(Cors::Origins(vec![
            "https://dash.example".into(),
            "http://127.0.0.1:3000".into(),
            "http://[::1]:8080".into(),
        ]))
    );
    for bad in [
        "dash.example",
        "https://dash.example/",
        "https://dash.example/path",
        "ftp://dash.example",
        "https://",
        "https://dash example",
        "https://dash.example:0",
        "https://dash.example:99999",
        "https://[::1",
        "https://a\u{7f}b",
    ] {
        let err = cors(bad).unwrap_err();
        assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
    }
    let err = cors("*, https://dash.example").unwrap_err();
    assert!(err.contains("stands alone"), "{err}");
}

#[test]
fn drain_delay_takes_zero_to_five_minutes_and_names_the_flag_otherwise() {
    let with = |ms| Settings {
        drain_delay_ms: Some(ms),
        ..secure()
    };
    assert_eq!(with(0).resolve().unwrap().drain_delay, Duration::ZERO);
    assert_eq!(
        with(300_000).resolve().unwrap().drain_delay,
        Duration::from_secs(300)
    );
    let err = with(300_001).resolve().unwrap_err().to_string();
    assert!(
        err.contains("--drain-delay-ms") && err.contains("0 to 300000"),
        "{err}"
    );
}

#[test]
fn snapshot_settings_name_what_they_accept() {
    let with = |bucket: Option<&str>, interval: Option<u64>, keep: Option<usize>| Settings {
        snapshot_bucket: bucket.map(str::to_owned),
        snapshot_interval_secs: interval,
        snapshot_keep: keep,
        ..secure()
    };
    assert!(with(None, None, None).resolve().unwrap().snapshot.is_none());
    let s = with(Some("orrery-snaps_1"), None, None)
        .resolve()
        .unwrap()
        .snapshot
        .unwrap();
    assert_eq!((s.interval, s.keep), (Duration::from_secs(3600), 3));
    for (bad, named) in [
        (with(Some(""), None, None), "--snapshot-bucket"),
        (with(Some("a.b"), None, None), "--snapshot-bucket"),
        (with(Some("snaps>"), None, None), "--snapshot-bucket"),
        (with(Some(&"x".repeat(65)), None, None), "--snapshot-bucket"),
        (with(Some("ok"), Some(0), None), "--snapshot-interval-secs"),
        (
            with(Some("ok"), Some(604_801), None),
            "--snapshot-interval-secs",
        ),
        (with(Some("ok"), None, Some(0)), "--snapshot-keep"),
        (with(Some("ok"), None, Some(101)), "--snapshot-keep"),
    ] {
        let err = bad.resolve().unwrap_err().to_string();
        assert!(err.contains(named) && err.contains("accepts"), "{err}");
    }
}

#[test]
fn provider_settings_are_checked_and_need_a_provider() {
    let with = |f: &dyn Fn(&mut Settings)| {
        let mut s = Settings {
            auth_issuer: Some("https://idp.example/realms/ops".into()),
            auth_audience: Some("orrery".into()),
            ..Default::default()
        };
        f(&mut s);
        s.resolve().map_err(|e| format!("{e:#}"))
    };
    // A provider alone is enough: no HS256 secret needed.
    let c = with(&|_| {}).unwrap();
    let oidc = c.oidc.unwrap();
    assert!(c.jwt_secret.is_none());
    assert_eq!(oidc.role_claim, ["orrery_role"]);
    assert_eq!(oidc.roles.len(), 3);
    assert_eq!(oidc.cooldown, Duration::from_secs(60));
    let c = with(&|s| {
        s.auth_role_claim = Some("realm_access.roles".into());
        s.auth_roles = Some("ops = operator, admins=admin".into());
    })
    .unwrap()
    .oidc
    .unwrap();
    assert_eq!(c.role_claim, ["realm_access", "roles"]);
    assert_eq!(
        c.roles,
        [
            ("ops".to_owned(), crate::token::Role::Operator),
            ("admins".to_owned(), crate::token::Role::Admin)
        ]
    );
    for (bad, named) in [
        (
            with(&|s| s.auth_issuer = Some("http://idp.example".into())),
            "--auth-issuer",
        ),
        (
            with(&|s| s.auth_issuer = Some("idp".into())),
            "--auth-issuer",
        ),
        (
            with(&|s| s.auth_jwks_url = Some("ftp://x/jwks".into())),
            "--auth-jwks-url",
        ),
        (with(&|s| s.auth_audience = None), "--auth-audience"),
        (
            with(&|s| s.auth_audience = Some(" , ".into())),
            "--auth-audience",
        ),
        (
            with(&|s| s.auth_audience = Some("é".repeat(300))),
            "--auth-audience",
        ),
        (
            with(&|s| s.auth_role_claim = Some("a..b".into())),
            "--auth-role-claim",
        ),
        (
            with(&|s| s.auth_role_claim = Some(String::new())),
            "--auth-role-claim",
        ),
        (
            with(&|s| s.auth_roles = Some("ops=root".into())),
            "--auth-roles",
        ),
        (with(&|s| s.auth_roles = Some("ops".into())), "--auth-roles"),
        (
            with(&|s| s.auth_roles = Some("=admin".into())),
            "--auth-roles",
        ),
        (with(&|s| s.auth_roles = Some(",".into())), "--auth-roles"),
        (
            with(&|s| s.auth_jwks_cooldown_secs = Some(0)),
            "--auth-jwks-cooldown-secs",
        ),
        (
            with(&|s| s.auth_jwks_cooldown_secs = Some(3601)),
            "--auth-jwks-cooldown-secs",
        ),
        (
            with(&|s| s.auth_ca = Some("/nonexistent/ca.pem".into())),
            "--auth-ca",
        ),
        (
            with(&|s| s.auth_client_id = Some("a\u{1}b".into())),
            "--auth-client-id",
        ),
        (
            with(&|s| {
                s.auth_issuer = None;
                s.auth_jwks_url = Some("https://idp.example/jwks".into());
                s.auth_client_id = Some("dash".into());
            }),
            "--auth-client-id",
        ),
        (
            with(&|s| s.insecure_no_auth = Some(true)),
            "--insecure-no-auth",
        ),
        (
            with(&|s| {
                s.auth_issuer = None;
                s.jwt_secret = Some("x".repeat(32));
            }),
            "--auth-audience is set but no OpenID provider",
        ),
    ] {
        let err = bad.unwrap_err();
        assert!(err.contains(named), "{named}: {err}");
    }
}
