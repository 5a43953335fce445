//! The rules for user ids and subdirectory names; pure, so every rejection happens before any
//! file system call.

use super::WorkspaceError;

const USER_ID_MAX: usize = 64;
const SUBDIR_MAX_CHARS: usize = 200;
const COMPONENT_MAX_BYTES: usize = 255;

/// Checks a user id: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_user_id(user_id: &str) -> Result<(), WorkspaceError> {
    let reject = |why: String| Err(WorkspaceError::InvalidUserId(why));
    if user_id.is_empty() {
        return reject("user_id must not be empty".into());
    }
    if user_id.chars().count() > USER_ID_MAX {
        return reject(format!("user_id must be at most {USER_ID_MAX} characters"));
    }
    if let Some(bad) = user_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return reject(format!(
            "user_id may contain only A-Z, a-z, 0-9, '_' and '-' (found {bad:?})"
        ));
    }
    Ok(())
}

/// The canonical form of a subdirectory: one trailing slash dropped (the seed accepted
/// `"my-project/"` for `"my-project"`). Anything else is left for `check_subdir` to judge, so
/// `"/"`, `"a//"` and `""` stay as they are (and are refused).
pub fn normalize_subdir(subdir: &str) -> &str {
    match subdir.strip_suffix('/') {
        Some(rest) if !rest.is_empty() && !rest.ends_with('/') => rest,
        _ => subdir,
    }
}

/// Checks a subdirectory and returns the components of its canonical form.
pub fn check_subdir(subdir: &str) -> Result<Vec<&str>, WorkspaceError> {
    let reject = |why: String| Err(WorkspaceError::InvalidSubdir(why));
    if subdir.is_empty() {
        return reject("subdir must not be empty (omit it to use the user's root)".into());
    }
    let subdir = normalize_subdir(subdir);
    if subdir.chars().count() > SUBDIR_MAX_CHARS {
        return reject(format!("subdir must be at most {SUBDIR_MAX_CHARS} characters"));
    }
    if subdir.starts_with('/') {
        return reject("subdir must be relative, not an absolute path".into());
    }
    if subdir.contains('\\') {
        return reject("subdir must not contain a backslash".into());
    }
    if subdir.contains('%') {
        return reject("subdir must not contain '%' (no percent-encoding)".into());
    }
    if subdir.chars().any(char::is_control) {
        return reject("subdir must not contain control characters or NUL".into());
    }
    let components: Vec<&str> = subdir.split('/').collect();
    for component in &components {
        if component.is_empty() {
            return reject(
                "subdir must not contain empty components ('//' or more than one trailing '/')".into(),
            );
        }
        if *component == "." || *component == ".." {
            return reject(format!("subdir must not contain '{component}' components"));
        }
        if component.len() > COMPONENT_MAX_BYTES {
            return reject(format!(
                "each subdir component must be at most {COMPONENT_MAX_BYTES} bytes"
            ));
        }
        if component.starts_with('-') {
            return reject(format!("subdir component {component:?} must not start with '-'"));
        }
        if let Some(bad) = component
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | ' ')))
        {
            return reject(format!(
                "subdir may contain only letters, digits, '.', '_', '-' and spaces (found {bad:?})"
            ));
        }
    }
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_user_ids_pass() {
        for id in ["alice", "A_b-9", &"x".repeat(64)] {
            check_user_id(id).unwrap();
        }
    }

    #[test]
    fn bad_user_ids_fail() {
        for id in ["", "a b", "a/b", "..", "a\n", "é", &"x".repeat(65), "a.b", "a\0"] {
            assert!(check_user_id(id).is_err(), "{id:?} should be refused");
        }
    }

    #[test]
    fn good_subdirs_pass() {
        for dir in ["p", "my-project", "a/b/c", "项目 一", "v1.2_x", "...x"] {
            assert_eq!(check_subdir(dir).unwrap().join("/"), dir);
            assert_eq!(normalize_subdir(dir), dir);
        }
    }

    #[test]
    fn one_trailing_slash_names_the_same_directory() {
        for (dir, canonical) in [("my-project/", "my-project"), ("a/b/", "a/b"), ("项目/", "项目")] {
            assert_eq!(normalize_subdir(dir), canonical);
            assert_eq!(check_subdir(dir).unwrap().join("/"), canonical);
        }
        for dir in ["/", "a//", "", "//", "a//b/", "/a/", "../", "./"] {
            assert!(check_subdir(dir).is_err(), "{dir:?} should be refused");
        }
        assert_eq!(normalize_subdir("a//"), "a//");
        assert_eq!(normalize_subdir("/"), "/");
    }

    #[test]
    fn hostile_subdirs_fail() {
        let cases = [
            "..",
            "../x",
            "a/../../b",
            "a/..",
            "./a",
            "/etc",
            "//etc",
            "a//b",
            "a//",
            "/",
            "",
            "..\\x",
            "%2e%2e/x",
            "%2E%2E",
            "a\0b",
            "a\nb",
            "a\u{7f}",
            "-rf",
            "a/-b",
            "a:b",
            "a*b",
            "~",
            "$HOME",
            "a\u{202e}b",
        ];
        for dir in cases {
            assert!(check_subdir(dir).is_err(), "{dir:?} should be refused");
        }
        assert!(check_subdir(&"a".repeat(256)).is_err());
        assert!(check_subdir(&"a/".repeat(101)).is_err());
    }
}
