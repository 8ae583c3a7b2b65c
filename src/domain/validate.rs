//! Checks on user input (repository URLs, branches, names, e-mail addresses, passwords)
//! that return a [`FieldError`] naming the field and saying how to fix it.
//!
//! These are shape checks only: whether a repository exists or an e-mail address receives
//! mail is found out elsewhere.

use std::fmt;

/// One invalid input field and why it is invalid, in words meant for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
    /// Set when the field is well formed but clashes with what the cell holds (a name in use,
    /// a class the policy does not allow): the stable code the API answers 409 with. Unset,
    /// the input itself is invalid.
    pub conflict: Option<&'static str>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
            conflict: None,
        }
    }

    /// A well-formed field that clashes with the cell's state, with the code to answer.
    pub fn conflict(
        field: impl Into<String>,
        code: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        FieldError {
            conflict: Some(code),
            ..FieldError::new(field, reason)
        }
    }
}

/// Longest repository URL accepted; real ones are far shorter, and the limit keeps
/// stored records and log lines bounded.
const MAX_URL_LEN: usize = 2048;
const MAX_BRANCH_LEN: usize = 255;
const MAX_EMAIL_LEN: usize = 254;
const MAX_WORKSPACE_NAME_LEN: usize = 63;
const MAX_DISPLAY_NAME_LEN: usize = 100;
const MIN_PASSWORD_LEN: usize = 10;
const MAX_PASSWORD_LEN: usize = 1024;

const SUPPORTED_FORMS: &str =
    "use https://host/path, http://host/path, ssh://host/path, user@host:path or file:///path";

/// How a repository is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepoScheme {
    Https,
    Http,
    /// Both `ssh://` URLs and the scp-like `user@host:path` form.
    Ssh,
    File,
}

impl RepoScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            RepoScheme::Https => "https",
            RepoScheme::Http => "http",
            RepoScheme::Ssh => "ssh",
            RepoScheme::File => "file",
        }
    }
}

/// A git repository location that passed [`RepoUrl::parse`]. It is kept exactly as the
/// user gave it (trimmed), because git treats differently spelled URLs as different
/// remotes and users recognise their own spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RepoUrl(String);

impl RepoUrl {
    /// A URL that was validated by [`RepoUrl::parse`] before it was stored; reading it back
    /// skips the (IDNA-heavy) parse on every load.
    pub fn from_stored(s: String) -> RepoUrl {
        RepoUrl(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The scheme; scp-like addresses count as ssh, which is what git uses for them.
    pub fn scheme(&self) -> RepoScheme {
        match self.0.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => RepoScheme::Https,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => RepoScheme::Http,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("file") => RepoScheme::File,
            _ => RepoScheme::Ssh,
        }
    }

    /// Checks a repository URL typed by a user.
    pub fn parse(s: &str) -> Result<RepoUrl, FieldError> {
        let err = |reason: &str| FieldError::new("url", reason);
        let s = s.trim();
        if s.is_empty() {
            return Err(err("enter the URL of a git repository"));
        }
        if s.len() > MAX_URL_LEN {
            return Err(err(&format!(
                "is longer than {MAX_URL_LEN} characters; use a shorter URL"
            )));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(
                "must not contain spaces or control characters; percent-encode them",
            ));
        }
        if s.contains("://") {
            check_url_form(s)?;
        } else {
            check_scp_form(s)?;
        }
        Ok(RepoUrl(s.to_owned()))
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `scheme://…` forms with the `url` crate.
fn check_url_form(s: &str) -> Result<(), FieldError> {
    let err = |reason: String| FieldError::new("url", reason);
    let url = url::Url::parse(s).map_err(|e| err(format!("is not a valid URL ({e})")))?;
    let scheme = url.scheme();
    match scheme {
        "https" | "http" | "ssh" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(err(format!("is missing a host; {SUPPORTED_FORMS}")));
            }
            if url.password().is_some() {
                return Err(err(
                    "do not put credentials in the URL; add a git credential instead".into(),
                ));
            }
            // Over http(s) a user name alone is almost always an access token, which is
            // as secret as a password; over ssh it is the account to log in as.
            if scheme != "ssh" && !url.username().is_empty() {
                return Err(err(
                    "do not put credentials in the URL; add a git credential instead".into(),
                ));
            }
        }
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(err(
                    "a file URL must not name a host; use file:///absolute/path".into(),
                ));
            }
        }
        other => {
            return Err(err(format!(
                "the scheme {other:?} is not supported; {SUPPORTED_FORMS}"
            )));
        }
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err(err(
            "is missing the repository path, e.g. https://host/owner/repo".into(),
        ));
    }
    Ok(())
}

/// Checks the scp-like `user@host:path` form that git accepts for ssh.
fn check_scp_form(s: &str) -> Result<(), FieldError> {
    let err = |reason: String| FieldError::new("url", reason);
    let Some((user, rest)) = s.split_once('@') else {
        return Err(err(format!(
            "is missing a user name or scheme; {SUPPORTED_FORMS}"
        )));
    };
    // git reads `a/b:c` as a local path, not as scp-like; such paths must be file URLs.
    if user.contains(['/', ':']) {
        return Err(err(format!("is not a repository URL; {SUPPORTED_FORMS}")));
    }
    if user.is_empty() {
        return Err(err(
            "is missing the user name before '@', e.g. git@host:path".into(),
        ));
    }
    // An IPv6 host is bracketed and contains colons itself, so the separator is the
    // first colon after the closing bracket.
    let split = if rest.starts_with('[') {
        rest.split_once("]:")
            .map(|(h, p)| (&rest[..h.len() + 1], p))
    } else {
        rest.split_once(':')
    };
    let Some((host, path)) = split else {
        return Err(err(format!(
            "is missing ':' between host and path; {SUPPORTED_FORMS}"
        )));
    };
    if host.is_empty() || url::Host::parse(host).is_err() {
        return Err(err("is missing a valid host, e.g. git@host:path".into()));
    }
    if path.trim_start_matches('/').is_empty() {
        return Err(err(
            "is missing the repository path, e.g. git@host:owner/repo".into(),
        ));
    }
    Ok(())
}

/// A repository to clone into a workspace, and optionally which branch or commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    pub url: RepoUrl,
    /// `None` means the repository's default branch.
    pub branch: Option<String>,
}

impl RepoSpec {
    /// Checks the URL and (if given) the branch. An empty or blank branch counts as not
    /// given, because forms send empty strings for untouched fields.
    pub fn new(url: &str, branch: Option<&str>) -> Result<RepoSpec, FieldError> {
        let url = RepoUrl::parse(url)?;
        let branch = match branch.map(str::trim) {
            None | Some("") => None,
            Some(b) => {
                validate_branch(b)?;
                Some(b.to_owned())
            }
        };
        Ok(RepoSpec { url, branch })
    }
}

/// Checks a branch name by git's `check-ref-format` rules. A commit id (40 or 64 hex
/// digits) passes these rules too, so it is accepted as well.
pub fn validate_branch(s: &str) -> Result<(), FieldError> {
    let err = |reason: &str| Err(FieldError::new("branch", reason));
    if s.is_empty() {
        return err("enter a branch name or commit id");
    }
    if s.len() > MAX_BRANCH_LEN {
        return err("is longer than 255 characters");
    }
    if s.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return err("must not contain spaces or control characters");
    }
    if let Some(c) = s.chars().find(|c| "~^:?*[\\".contains(*c)) {
        return err(&format!("must not contain {c:?}"));
    }
    if s.contains("..") {
        return err("must not contain \"..\"");
    }
    if s.contains("@{") {
        return err("must not contain \"@{\"");
    }
    if s == "@" {
        return err("\"@\" alone is not a branch name");
    }
    if s.starts_with('-') || s.starts_with('/') || s.starts_with('.') {
        return err("must not start with '-', '/' or '.'");
    }
    if s.ends_with('/') || s.ends_with('.') || s.ends_with(".lock") {
        return err("must not end with '/', '.' or \".lock\"");
    }
    if s.contains("//") {
        return err("must not contain \"//\"");
    }
    // git applies the dot rules to every path component, not just the whole name.
    if s.split('/')
        .any(|c| c.starts_with('.') || c.ends_with(".lock"))
    {
        return err("no part between slashes may start with '.' or end with \".lock\"");
    }
    Ok(())
}

/// Checks an e-mail address and returns it trimmed and lowercased, the form in which
/// addresses are stored and compared.
pub fn validate_email(s: &str) -> Result<String, FieldError> {
    let err = |reason: &str| Err(FieldError::new("email", reason));
    let email = s.trim().to_lowercase();
    if email.is_empty() {
        return err("enter an e-mail address");
    }
    if email.len() > MAX_EMAIL_LEN {
        return err("is longer than 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return err("must not contain spaces");
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return err("must contain exactly one '@', e.g. name@example.com");
    };
    if local.is_empty() {
        return err("is missing the part before '@'");
    }
    if domain.is_empty() {
        return err("is missing the domain after '@'");
    }
    Ok(email)
}

/// Checks a workspace name. The shape is that of a DNS label, because the name appears
/// in host names of forwarded ports.
pub fn validate_workspace_name(s: &str) -> Result<(), FieldError> {
    check_slug("name", s, MAX_WORKSPACE_NAME_LEN)
}

/// Lowercase letters, digits and '-', not at either end: the shape of names that end up
/// in host names and paths.
pub(crate) fn check_slug(field: &str, s: &str, max: usize) -> Result<(), FieldError> {
    let err = |reason: String| Err(FieldError::new(field, reason));
    if s.is_empty() {
        return err("enter a name".into());
    }
    if s.len() > max {
        return err(format!("is longer than {max} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("use only lowercase letters, digits and '-'".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return err("must not start or end with '-'".into());
    }
    Ok(())
}

/// Checks a person's or organization's display name and returns it trimmed.
pub fn validate_display_name(s: &str) -> Result<String, FieldError> {
    let err = |reason: &str| Err(FieldError::new("name", reason));
    let name = s.trim();
    if name.is_empty() {
        return err("enter a name");
    }
    // Counted before trimming, so the limit is one a client can check on what it sends.
    if s.chars().count() > MAX_DISPLAY_NAME_LEN {
        return err("is longer than 100 characters");
    }
    if name.chars().any(char::is_control) {
        return err("must not contain control characters");
    }
    Ok(name.to_owned())
}

/// Checks a new password's length. It is not trimmed: spaces may be part of it.
pub fn validate_password(s: &str) -> Result<(), FieldError> {
    let n = s.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(FieldError::new(
            "password",
            format!("use at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(FieldError::new(
            "password",
            format!("use at most {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

// Panicking on an unexpected result is how a test fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn url_reason(s: &str) -> String {
        let e = RepoUrl::parse(s).unwrap_err();
        assert_eq!(e.field, "url");
        e.reason
    }

    #[test]
    fn field_error_display() {
        let e = FieldError::new("name", "enter a name");
        assert_eq!(e.to_string(), "name: enter a name");
        assert_eq!(e.field, "name");
        assert_eq!(e.reason, "enter a name");
    }

    #[test]
    fn accepts_supported_url_forms() {
        let cases = [
            ("https://github.com/owner/repo", RepoScheme::Https),
            ("https://github.com/owner/repo.git", RepoScheme::Https),
            ("HTTPS://GitHub.com/owner/repo", RepoScheme::Https),
            ("https://git.example.com:8443/a/b/c", RepoScheme::Https),
            ("http://10.0.0.1/repo", RepoScheme::Http),
            ("ssh://git@github.com/owner/repo.git", RepoScheme::Ssh),
            ("ssh://github.com:2222/owner/repo", RepoScheme::Ssh),
            ("ssh://host/repo", RepoScheme::Ssh),
            ("git@github.com:owner/repo.git", RepoScheme::Ssh),
            ("git@github.com:/abs/repo", RepoScheme::Ssh),
            ("me@[::1]:repo", RepoScheme::Ssh),
            ("file:///srv/git/repo.git", RepoScheme::File),
        ];
        for (s, scheme) in cases {
            let u = RepoUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(u.as_str(), s, "kept as given");
            assert_eq!(u.to_string(), s);
            assert_eq!(u.scheme(), scheme, "{s}");
        }
    }

    #[test]
    fn trims_surrounding_whitespace() {
        let u = RepoUrl::parse("  https://github.com/o/r\n").unwrap();
        assert_eq!(u.as_str(), "https://github.com/o/r");
    }

    #[test]
    fn rejects_empty_and_long_urls() {
        assert!(url_reason("").contains("enter"));
        assert!(url_reason("   ").contains("enter"));
        let long = format!("https://h/{}", "a".repeat(MAX_URL_LEN));
        assert!(url_reason(&long).contains("longer than 2048"));
        let just_fits = format!("https://h/{}", "a".repeat(MAX_URL_LEN - "https://h/".len()));
        assert!(RepoUrl::parse(&just_fits).is_ok());
    }

    #[test]
    fn rejects_whitespace_and_control_inside() {
        for s in [
            "https://github.com/o/r epo",
            "https://github.com/o/r\trepo",
            "git@host:o/r\u{7f}",
            "https://github.com/o/\u{0}r",
            "https://github.com/o/r\u{a0}x",
        ] {
            assert!(url_reason(s).contains("spaces or control"), "{s:?}");
        }
    }

    #[test]
    fn rejects_other_schemes_naming_the_supported_ones() {
        for s in ["git://github.com/o/r", "ftp://h/r", "javascript://x/y"] {
            let r = url_reason(s);
            assert!(r.contains("not supported"), "{s}: {r}");
            assert!(
                r.contains("https://") && r.contains("user@host:path"),
                "{r}"
            );
        }
    }

    #[test]
    fn rejects_missing_host() {
        assert!(!url_reason("https:///path").is_empty());
        assert!(url_reason("ssh:///path").contains("host"));
        assert!(url_reason("git@:path").contains("host"));
        assert!(url_reason("git@bad host:path").contains("spaces"));
        assert!(url_reason("git@ex%ample:path").contains("host"));
    }

    #[test]
    fn rejects_missing_path() {
        for s in [
            "https://github.com",
            "https://github.com/",
            "http://github.com//",
            "ssh://git@host",
            "ssh://git@host/",
            "file:///",
            "git@host:",
            "git@host:/",
        ] {
            assert!(url_reason(s).contains("path"), "{s}");
        }
    }

    #[test]
    fn rejects_credentials_in_http_urls() {
        for s in [
            "https://user:secret@github.com/o/r",
            "http://user:secret@github.com/o/r",
            "https://ghp_token@github.com/o/r",
            "ssh://git:secret@host/o/r",
        ] {
            assert_eq!(
                url_reason(s),
                "do not put credentials in the URL; add a git credential instead",
                "{s}"
            );
        }
        // An ssh user name is just the account to log in as.
        assert!(RepoUrl::parse("ssh://git@host/o/r").is_ok());
        assert!(RepoUrl::parse("git@host:o/r").is_ok());
    }

    #[test]
    fn file_urls_must_be_absolute_without_host() {
        assert!(url_reason("file://server/srv/repo").contains("file:///absolute/path"));
        assert!(RepoUrl::parse("file:///srv/repo").is_ok());
    }

    #[test]
    fn rejects_things_that_are_not_urls() {
        for s in ["github.com/o/r", "/srv/repo", "repo", "./repo", "a/b:c"] {
            assert!(url_reason(s).contains("https://host/path"), "{s}");
        }
        assert!(url_reason("host:path").contains("user name"));
        assert!(url_reason("git@host").contains("':'"));
        assert!(url_reason("git@[::1").contains("':'"));
        assert!(url_reason("@host:path").contains("user name"));
        assert!(url_reason("https://exa mple.com/x").contains("spaces"));
        assert!(url_reason("https://[::1/x").contains("not a valid URL"));
    }

    #[test]
    fn scheme_names() {
        assert_eq!(RepoScheme::Https.as_str(), "https");
        assert_eq!(RepoScheme::Http.as_str(), "http");
        assert_eq!(RepoScheme::Ssh.as_str(), "ssh");
        assert_eq!(RepoScheme::File.as_str(), "file");
    }

    #[test]
    fn repo_spec_checks_both_parts() {
        let spec = RepoSpec::new("https://h/o/r", Some("main")).unwrap();
        assert_eq!(spec.url.as_str(), "https://h/o/r");
        assert_eq!(spec.branch.as_deref(), Some("main"));
        assert_eq!(RepoSpec::new("https://h/o/r", None).unwrap().branch, None);
        assert_eq!(
            RepoSpec::new("https://h/o/r", Some("  ")).unwrap().branch,
            None
        );
        assert_eq!(
            RepoSpec::new("https://h/o/r", Some("a..b"))
                .unwrap_err()
                .field,
            "branch"
        );
        assert_eq!(
            RepoSpec::new("nope", Some("main")).unwrap_err().field,
            "url"
        );
    }

    #[test]
    fn accepts_valid_branches() {
        for b in [
            "main",
            "feature/login",
            "release-1.2",
            "a.b",
            "user/x_y+z",
            "v1.0@2",
            "ünïcode",
            "0123456789abcdef0123456789abcdef01234567",
            &"a".repeat(MAX_BRANCH_LEN),
        ] {
            assert_eq!(validate_branch(b), Ok(()), "{b}");
        }
    }

    #[test]
    fn rejects_invalid_branches() {
        let long = "a".repeat(MAX_BRANCH_LEN + 1);
        for b in [
            "",
            long.as_str(),
            "a b",
            "a\tb",
            "a\u{7f}b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[b",
            "a\\b",
            "a..b",
            "a@{1}",
            "@",
            "-x",
            "/x",
            ".x",
            "x/",
            "x.",
            "x.lock",
            "a//b",
            "a/.b",
            "a.lock/b",
        ] {
            let e = validate_branch(b).unwrap_err();
            assert_eq!(e.field, "branch", "{b}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn email_is_normalised() {
        assert_eq!(
            validate_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        assert_eq!(validate_email("a@localhost").unwrap(), "a@localhost");
    }

    #[test]
    fn rejects_invalid_emails() {
        let long = format!("{}@example.com", "a".repeat(MAX_EMAIL_LEN));
        for s in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "al ice@example.com",
            "alice@exa mple.com",
            "alice@exa\u{0}mple.com",
            long.as_str(),
        ] {
            assert_eq!(validate_email(s).unwrap_err().field, "email", "{s:?}");
        }
        // Exactly at the limit is fine.
        let at_limit = format!("{}@example.com", "a".repeat(MAX_EMAIL_LEN - 12));
        assert_eq!(at_limit.len(), MAX_EMAIL_LEN);
        assert!(validate_email(&at_limit).is_ok());
    }

    #[test]
    fn workspace_names() {
        for ok in ["a", "my-ws", "ws1", "0", &"a".repeat(63)] {
            assert_eq!(validate_workspace_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "-",
            "My-ws",
            "a_b",
            "a b",
            "a.b",
            "é",
            &"a".repeat(64),
        ] {
            assert_eq!(
                validate_workspace_name(bad).unwrap_err().field,
                "name",
                "{bad}"
            );
        }
    }

    #[test]
    fn display_names() {
        assert_eq!(
            validate_display_name("  Ada Lovelace ").unwrap(),
            "Ada Lovelace"
        );
        assert!(validate_display_name(&"é".repeat(100)).is_ok());
        for bad in ["", "   ", "a\nb", "a\u{0}", &"é".repeat(101)] {
            assert_eq!(
                validate_display_name(bad).unwrap_err().field,
                "name",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords() {
        assert!(validate_password("0123456789").is_ok());
        assert!(validate_password("  spaces  ").is_ok());
        assert!(validate_password(&"é".repeat(MAX_PASSWORD_LEN)).is_ok());
        for bad in ["", "012345678", &"x".repeat(MAX_PASSWORD_LEN + 1)] {
            assert_eq!(validate_password(bad).unwrap_err().field, "password");
        }
        assert!(
            validate_password("short")
                .unwrap_err()
                .reason
                .contains("at least 10")
        );
    }
}
