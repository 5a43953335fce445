//! Hostile user ids and subdirectories, and symlinks planted inside a user's directory.

use std::os::unix::fs::{PermissionsExt, symlink};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestServer, expect_json};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Everything under the users folder, to prove a rejection wrote nothing.
fn tree(server: &TestServer) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                out.push(entry.path().display().to_string());
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&server.data_dir().join("users"), &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn hostile_subdirs_are_refused_with_a_reason_and_leave_nothing() {
    let server = TestServer::start("").await;
    let hostile = [
        "..",
        "../bob",
        "a/../../bob",
        "a/..",
        "./a",
        "/etc",
        "//etc",
        "a//b",
        "a//",
        "/",
        "",
        "..\\bob",
        "a\\b",
        "%2e%2e/bob",
        "%2E%2E%2Fbob",
        "..%2fbob",
        "a\u{0}b",
        "a\nb",
        "a\tb",
        "-rf",
        "x/-r",
        "a:b",
        "a*b",
        "~",
        "~/x",
        "$HOME",
        "a\u{202e}b",
        "....//bob",
        "\u{ff0e}\u{ff0e}/bob",
    ];
    for subdir in hostile {
        let response = server
            .post("/api/v1/sessions", json!({"user_id": "alice", "subdir": subdir}))
            .await;
        let body = expect_json(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["code"], "invalid_subdir", "{subdir:?}: {body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("invalid subdir: "),
            "{body}"
        );
    }
    let long = "a".repeat(201);
    let body = expect_json(
        server
            .post("/api/v1/sessions", json!({"user_id": "alice", "subdir": long}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("200"), "{body}");
    assert!(tree(&server).is_empty(), "rejections wrote {:?}", tree(&server));
}

#[tokio::test]
async fn hostile_user_ids_are_refused() {
    let server = TestServer::start("").await;
    let too_long = "x".repeat(65);
    for user_id in [
        "",
        "..",
        "../x",
        "a/b",
        "a b",
        "a\n",
        "é",
        "a.b",
        "/",
        too_long.as_str(),
        "a\u{0}",
    ] {
        let body = expect_json(
            server.post("/api/v1/sessions", json!({"user_id": user_id})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["code"], "invalid_user_id", "{user_id:?}");
    }
    assert!(tree(&server).is_empty());
}

#[tokio::test]
async fn unicode_project_names_work_and_directories_are_private() {
    let server = TestServer::start("").await;
    let session = server
        .user("zhangsan")
        .create_session(Some("项目 一/v1.2_x"))
        .await;
    let cwd = std::path::PathBuf::from(session["cwd"].as_str().unwrap());
    assert!(cwd.ends_with("zhangsan/项目 一/v1.2_x"));
    for dir in [
        cwd.as_path(),
        cwd.parent().unwrap(),
        cwd.parent().unwrap().parent().unwrap(),
    ] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    }
}

#[tokio::test]
async fn one_trailing_slash_names_the_same_directory() {
    let server = TestServer::start("").await;
    let alice = server.user("alice");
    let slashed = alice.create_session(Some("proj/")).await;
    let plain = alice.create_session(Some("proj")).await;
    let nested = alice.create_session(Some("proj/sub/")).await;
    assert_eq!(slashed["cwd"], plain["cwd"]);
    assert_eq!(slashed["subdir"], "proj", "stored without the slash");
    assert!(
        nested["cwd"].as_str().unwrap().ends_with("alice/proj/sub"),
        "{nested}"
    );
    assert_eq!(nested["subdir"], "proj/sub");
    let id = slashed["session_id"].as_str().unwrap();
    let read = expect_json(
        server.get(&format!("/api/v1/sessions/{id}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!((&read["subdir"], &read["cwd"]), (&plain["subdir"], &plain["cwd"]));
}

/// The server's files and folders are the service user's alone, even under a permissive umask.
#[tokio::test]
async fn the_data_folder_is_private_whatever_the_umask() {
    use rustix::fs::Mode;
    // The server inherits the umask at spawn; each test runs in its own process under nextest.
    let previous = rustix::process::umask(Mode::empty());
    // The SQLite file is part of what must be private.
    let server = TestServer::start("session:\n  storage: sqlite\n").await;
    rustix::process::umask(previous);
    server.user("alice").create_session(Some("proj/deep")).await;
    let data = server.data_dir();
    for dir in [
        data.clone(),
        data.join("users"),
        data.join("agents"),
        data.join("cli"),
        data.join("users/alice"),
        data.join("users/alice/proj"),
        data.join("users/alice/proj/deep"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{} has mode {:o}", dir.display(), mode(&dir));
    }
    for file in ["sessions.db", "sessions.db-wal", "sessions.db-shm"] {
        let path = data.join(file);
        assert_eq!(mode(&path), 0o600, "{file} has mode {:o}", mode(&path));
    }

    // A database left readable by an older version is made private at startup.
    let mut server = server;
    server.stop();
    std::fs::set_permissions(data.join("sessions.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = server.restart().await;
    assert_eq!(mode(&server.data_dir().join("sessions.db")), 0o600);
    server.user("alice").create_session(None).await;
}

#[tokio::test]
async fn symlinks_planted_in_a_user_directory_never_lead_outside() {
    let server = TestServer::start("").await;
    server.user("alice").create_session(None).await;
    server.user("bob").create_session(Some("secret")).await;
    let alice = server.data_dir().join("users/alice");
    symlink(server.data_dir().join("users/bob"), alice.join("to-bob")).unwrap();
    symlink("/", alice.join("to-root")).unwrap();
    symlink("../bob/secret", alice.join("relative")).unwrap();
    std::fs::write(alice.join("a-file"), "x").unwrap();
    let before = tree(&server);
    for (subdir, code) in [
        ("to-bob", "workspace_symlink"),
        ("to-bob/secret", "workspace_symlink"),
        ("to-root", "workspace_symlink"),
        ("to-root/etc", "workspace_symlink"),
        ("to-root/tmp/new", "workspace_symlink"),
        ("relative", "workspace_symlink"),
        ("a-file", "workspace_not_a_directory"),
        ("a-file/x", "workspace_not_a_directory"),
    ] {
        let response = server
            .post("/api/v1/sessions", json!({"user_id": "alice", "subdir": subdir}))
            .await;
        let body = expect_json(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["code"], code, "{subdir}: {body}");
    }
    assert_eq!(tree(&server), before, "rejections changed the disk");
    assert!(!std::path::Path::new("/tmp/new").exists());
    assert!(
        server.user("alice").session_ids().await.len() == 1,
        "refused creates stored nothing"
    );

    // A user directory that is itself a link is refused too.
    symlink(
        server.data_dir().join("users/bob"),
        server.data_dir().join("users/mallory"),
    )
    .unwrap();
    let body = expect_json(
        server.user("mallory").try_create_session(None).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["code"], "workspace_symlink");
}

#[tokio::test]
async fn without_auto_create_a_missing_directory_is_refused() {
    let server = TestServer::start("user:\n  auto_create_dir: false\n").await;
    let body = expect_json(
        server.user("alice").try_create_session(None).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["code"], "workspace_missing");
    std::fs::create_dir_all(server.data_dir().join("users/alice/p")).unwrap();
    server.user("alice").create_session(Some("p")).await;
}
