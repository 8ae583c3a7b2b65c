//! A Dockerfile read into owned build steps: the syntax is `parse-dockerfile`'s; this module
//! keeps what the builder needs (the instruction, its line, its flags) and does the parts the
//! Dockerfile reference leaves to the builder: variable substitution, `ENV`/`LABEL` pairs,
//! line continuations of shell-form commands, and `.dockerignore` patterns.

use std::fmt;

/// A file name and line for messages: `Dockerfile:12`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A command of `RUN`, `CMD` or `ENTRYPOINT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    /// JSON array: run as given.
    Exec(Vec<String>),
    /// Text for the stage's `SHELL`.
    Shell(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    From {
        image: String,
        name: Option<String>,
    },
    Arg(Vec<(String, Option<String>)>),
    Env(String),
    Label(String),
    Run(Cmd),
    /// `COPY` (`add: false`) or `ADD`.
    Copy {
        add: bool,
        srcs: Vec<String>,
        dest: String,
        from: Option<String>,
        chown: Option<String>,
        chmod: Option<String>,
        /// Here-documents, as (name, content).
        inline: Vec<(String, String)>,
    },
    Workdir(String),
    User(String),
    Shell(Vec<String>),
    Expose(Vec<String>),
    Entrypoint(Cmd),
    Cmd(Cmd),
    /// Recorded nowhere the workspace uses (HEALTHCHECK, STOPSIGNAL, VOLUME, MAINTAINER,
    /// ONBUILD): said in the build's log.
    Ignored(&'static str),
}

/// One instruction with where it is and how it reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub place: Place,
    /// The instruction as written, on one line, for logs and cache keys.
    pub text: String,
    pub kind: Kind,
}

/// A Dockerfile that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct DockerfileError {
    pub place: Place,
    pub message: String,
}

/// Parses `text` (named `file` in messages) into its global `ARG`s and its steps.
pub fn parse(file: &str, text: &str) -> Result<Vec<Step>, DockerfileError> {
    let parsed = parse_dockerfile::parse(text).map_err(|e| DockerfileError {
        place: Place {
            file: file.to_owned(),
            line: e.line(),
        },
        message: e.to_string(),
    })?;
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map(|d| d.value.value)
        .unwrap_or('\\');
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut steps = Vec::new();
    for ins in &parsed.instructions {
        use parse_dockerfile::Instruction as I;
        let (start, kind) = match ins {
            I::From(f) => (
                f.from.span.start,
                Kind::From {
                    image: f.image.value.to_string(),
                    name: f.as_.as_ref().map(|(_, n)| n.value.to_string()),
                },
            ),
            I::Arg(a) => (a.arg.span.start, Kind::Arg(arg_pairs(&a.arguments.value))),
            I::Env(e) => (e.env.span.start, Kind::Env(e.arguments.value.to_string())),
            I::Label(l) => (
                l.label.span.start,
                Kind::Label(l.arguments.value.to_string()),
            ),
            I::Run(r) => {
                let cmd = match (&r.arguments, r.here_docs.first()) {
                    (parse_dockerfile::Command::Shell(s), Some(doc))
                        if s.value.trim_start().starts_with("<<") =>
                    {
                        // `RUN <<EOF` runs the document as the script.
                        Cmd::Shell(doc.value.to_string())
                    }
                    (c, _) => command(c, escape),
                };
                (r.run.span.start, Kind::Run(cmd))
            }
            I::Copy(c) => (
                c.copy.span.start,
                copy_kind(false, &c.options, &c.src, &c.dest.value),
            ),
            I::Add(a) => (
                a.add.span.start,
                copy_kind(true, &a.options, &a.src, &a.dest.value),
            ),
            I::Workdir(w) => (
                w.workdir.span.start,
                Kind::Workdir(w.arguments.value.to_string()),
            ),
            I::User(u) => (u.user.span.start, Kind::User(u.arguments.value.to_string())),
            I::Shell(s) => (
                s.shell.span.start,
                Kind::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect()),
            ),
            I::Expose(e) => (
                e.expose.span.start,
                Kind::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect()),
            ),
            I::Entrypoint(e) => (
                e.entrypoint.span.start,
                Kind::Entrypoint(command(&e.arguments, escape)),
            ),
            I::Cmd(c) => (c.cmd.span.start, Kind::Cmd(command(&c.arguments, escape))),
            I::Healthcheck(h) => (h.healthcheck.span.start, Kind::Ignored("HEALTHCHECK")),
            I::Stopsignal(s) => (s.stopsignal.span.start, Kind::Ignored("STOPSIGNAL")),
            I::Volume(v) => (v.volume.span.start, Kind::Ignored("VOLUME")),
            I::Maintainer(m) => (m.maintainer.span.start, Kind::Ignored("MAINTAINER")),
            I::Onbuild(o) => (o.onbuild.span.start, Kind::Ignored("ONBUILD")),
            // A newer instruction of the parser: not one this builder knows.
            #[allow(unreachable_patterns)]
            _ => continue,
        };
        let line = line_of(start);
        let text = one_line(text, start);
        steps.push(Step {
            place: Place {
                file: file.to_owned(),
                line,
            },
            text,
            kind,
        });
    }
    if !steps.iter().any(|s| matches!(s.kind, Kind::From { .. })) {
        return Err(DockerfileError {
            place: Place {
                file: file.to_owned(),
                line: 1,
            },
            message: "has no FROM instruction; start it with `FROM IMAGE`".into(),
        });
    }
    Ok(steps)
}

/// The instruction starting at `start`, its continuation lines joined, shortened for display.
fn one_line(text: &str, start: usize) -> String {
    let rest = &text[start..];
    let mut out = String::new();
    for line in rest.lines() {
        let trimmed = line.trim_end();
        if let Some(cont) = trimmed.strip_suffix('\\') {
            out.push_str(cont.trim());
            out.push(' ');
        } else {
            out.push_str(trimmed.trim());
            break;
        }
    }
    let out = out.trim().to_owned();
    if out.chars().count() > 120 {
        let cut: String = out.chars().take(117).collect();
        format!("{cut}...")
    } else {
        out
    }
}

fn command(c: &parse_dockerfile::Command<'_>, escape: char) -> Cmd {
    match c {
        parse_dockerfile::Command::Exec(args) => {
            Cmd::Exec(args.value.iter().map(|a| a.value.to_string()).collect())
        }
        parse_dockerfile::Command::Shell(s) => Cmd::Shell(join_continuations(s.value, escape)),
        #[allow(unreachable_patterns)]
        _ => Cmd::Exec(Vec::new()),
    }
}

/// Joins a shell-form command's continuation lines (the escape character before a newline)
/// and drops comment lines inside it, as the Dockerfile reference says.
pub fn join_continuations(raw: &str, escape: char) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut first = true;
    let mut continued = false;
    for line in raw.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !first && continued && line.trim_start().starts_with('#') {
            continue;
        }
        first = false;
        match line.trim_end().strip_suffix(escape) {
            Some(head) => {
                out.push_str(head);
                continued = true;
            }
            None => {
                out.push_str(line);
                if !continued {
                    out.push('\n');
                }
                continued = false;
            }
        }
    }
    out.trim_end_matches('\n').to_owned()
}

fn copy_kind(
    add: bool,
    options: &[parse_dockerfile::Flag<'_>],
    srcs: &[parse_dockerfile::Source<'_>],
    dest: &str,
) -> Kind {
    let flag = |name: &str| {
        options
            .iter()
            .find(|f| f.name.value == name)
            .and_then(|f| f.value.as_ref().map(|v| v.value.to_string()))
    };
    let mut paths = Vec::new();
    let mut inline = Vec::new();
    for s in srcs {
        match s {
            parse_dockerfile::Source::Path(p) => paths.push(p.value.to_string()),
            parse_dockerfile::Source::HereDoc(d) => {
                inline.push((format!("heredoc-{}", inline.len()), d.value.to_string()))
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    Kind::Copy {
        add,
        srcs: paths,
        dest: dest.to_owned(),
        from: flag("from"),
        chown: flag("chown"),
        chmod: flag("chmod"),
        inline,
    }
}

/// `ARG a=1 b` → `[("a", Some("1")), ("b", None)]`.
fn arg_pairs(text: &str) -> Vec<(String, Option<String>)> {
    words(text)
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .collect()
}

/// `KEY=VALUE ...` (values quoted as in a shell) or the old `KEY VALUE` form, after
/// substitution. Used by ENV and LABEL.
pub fn pairs(
    text: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, String> {
    let first = text.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        // The old form: one key, the rest of the line is the value.
        let (key, value) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{text:?} has no value; write KEY=VALUE"))?;
        return Ok(vec![(key.to_owned(), expand(value.trim(), vars)?)]);
    }
    let mut out = Vec::new();
    for w in words_raw(text) {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not KEY=VALUE"))?;
        out.push((unquote(k), expand_quoted(v, vars)?));
    }
    Ok(out)
}

/// Splits on unquoted whitespace, keeping quotes and escapes (for later substitution).
fn words_raw(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    let mut any = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, '\\') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                any = true;
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
                any = true;
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            _ => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Words with their quotes removed (for ARG names and defaults).
fn words(text: &str) -> Vec<String> {
    words_raw(text).iter().map(|w| unquote(w)).collect()
}

fn unquote(w: &str) -> String {
    expand_quoted(w, &|_| None).unwrap_or_else(|_| w.to_owned())
}

/// Removes quotes and escapes from one word, substituting variables outside single quotes.
fn expand_quoted(w: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = w.chars().peekable();
    let mut plain = String::new();
    let flush = |plain: &mut String, out: &mut String| -> Result<(), String> {
        out.push_str(&expand(plain, vars)?);
        plain.clear();
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                flush(&mut plain, &mut out)?;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    out.push(c);
                }
            }
            '"' => {
                flush(&mut plain, &mut out)?;
                let mut inner = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(n @ ('"' | '\\')) => inner.push(n),
                            Some('$') => inner.push_str("\\$"),
                            Some(n) => {
                                inner.push('\\');
                                inner.push(n);
                            }
                            None => {}
                        },
                        c => inner.push(c),
                    }
                }
                out.push_str(&expand(&inner, vars)?);
            }
            '\\' => match chars.next() {
                Some('$') => plain.push_str("\\$"),
                Some(n) => {
                    flush(&mut plain, &mut out)?;
                    out.push(n);
                }
                None => {}
            },
            c => plain.push(c),
        }
    }
    flush(&mut plain, &mut out)?;
    Ok(out)
}

/// Substitutes `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}`; `\$` is a
/// dollar sign. Unknown variables become empty, as in Docker.
pub fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                chars.next();
                out.push('$');
            }
            '$' => match chars.peek() {
                Some('{') => {
                    chars.next();
                    let mut inner = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        inner.push(c);
                    }
                    if !closed {
                        return Err(format!("`${{{inner}` is missing its closing brace"));
                    }
                    let (name, op) = match inner.find(':') {
                        Some(i) => (&inner[..i], Some(&inner[i..])),
                        None => (inner.as_str(), None),
                    };
                    let value = vars(name).filter(|v| !v.is_empty());
                    match op {
                        None => out.push_str(&vars(name).unwrap_or_default()),
                        Some(op) if op.starts_with(":-") => match value {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&expand(&op[2..], vars)?),
                        },
                        Some(op) if op.starts_with(":+") => {
                            if value.is_some() {
                                out.push_str(&expand(&op[2..], vars)?)
                            }
                        }
                        Some(op) => {
                            return Err(format!(
                                "`${{{name}{op}}}` is not a substitution this builder knows; \
                                 use ${{NAME}}, ${{NAME:-default}} or ${{NAME:+alternative}}"
                            ));
                        }
                    }
                }
                Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                    let mut name = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_ascii_alphanumeric() || c == '_' {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push_str(&vars(&name).unwrap_or_default());
                }
                _ => out.push('$'),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The rules of a `.dockerignore`: which context paths `COPY` and `ADD` leave out.
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    rules: Vec<(globset::GlobMatcher, bool)>,
    /// The patterns as written (after cleaning), for the copy tool and the cache key.
    pub patterns: Vec<String>,
}

impl Ignore {
    /// Reads the text of a `.dockerignore`: one pattern per line, `#` comments, `!` to
    /// include again; the last matching line decides.
    pub fn parse(text: &str) -> Result<Ignore, String> {
        let mut ignore = Ignore::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            ignore.patterns.push(line.to_owned());
        }
        ignore.compile()?;
        Ok(ignore)
    }

    pub fn from_patterns(patterns: Vec<String>) -> Result<Ignore, String> {
        let mut ignore = Ignore {
            rules: Vec::new(),
            patterns,
        };
        ignore.compile()?;
        Ok(ignore)
    }

    fn compile(&mut self) -> Result<(), String> {
        self.rules.clear();
        for p in &self.patterns {
            let (negated, p) = match p.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, p.as_str()),
            };
            let cleaned = p.trim_start_matches("./").trim_start_matches('/');
            let cleaned = cleaned.trim_end_matches('/');
            if cleaned.is_empty() {
                continue;
            }
            let glob = globset::GlobBuilder::new(cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!(".dockerignore: {p:?}: {e}"))?;
            self.rules.push((glob.compile_matcher(), negated));
        }
        Ok(())
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out: a pattern that
    /// matches one of its parent directories leaves out everything below it too.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for (glob, negated) in &self.rules {
            let mut prefix = String::new();
            let mut hit = false;
            for part in path.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                if glob.is_match(&prefix) {
                    hit = true;
                    break;
                }
            }
            if hit {
                excluded = !negated;
            }
        }
        excluded
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "A" => Some("1".into()),
            "EMPTY" => Some(String::new()),
            "HOME" => Some("/root".into()),
            _ => None,
        }
    }

    #[test]
    fn substitution_follows_the_dockerfile_reference() {
        assert_eq!(expand("x$A-${A}y", &vars).unwrap(), "x1-1y");
        assert_eq!(expand("${NOPE:-d$A}", &vars).unwrap(), "d1");
        assert_eq!(expand("${EMPTY:-d}", &vars).unwrap(), "d");
        assert_eq!(expand("${A:+set}${NOPE:+x}", &vars).unwrap(), "set");
        assert_eq!(expand(r"\$A costs $", &vars).unwrap(), "$A costs $");
        assert!(expand("${A", &vars).is_err());
        assert!(expand("${A:?x}", &vars).is_err());
    }

    #[test]
    fn env_takes_both_forms_with_quotes() {
        let p = pairs(r#"A=1 B="two words" C='$A' D=$HOME/x E=a\ b"#, &vars).unwrap();
        assert_eq!(
            p,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "$A".into()),
                ("D".into(), "/root/x".into()),
                ("E".into(), "a b".into()),
            ]
        );
        assert_eq!(
            pairs("OLD value with spaces", &vars).unwrap(),
            vec![("OLD".into(), "value with spaces".into())]
        );
    }

    #[test]
    fn steps_carry_their_line_and_continuations_are_joined() {
        let text = "# syntax=docker/dockerfile:1\nARG BASE=busybox\nFROM ${BASE} AS build\nRUN echo a \\\n  # a comment\n  && echo b\nCOPY --from=build --chown=1:2 a b /dest/\nRUN [\"/bin/sh\", \"-c\", \"true\"]\nHEALTHCHECK NONE\n";
        let steps = parse("Dockerfile", text).unwrap();
        assert_eq!(
            steps[0].kind,
            Kind::Arg(vec![("BASE".into(), Some("busybox".into()))])
        );
        assert_eq!(steps[1].place.line, 3);
        assert_eq!(
            steps[1].kind,
            Kind::From {
                image: "${BASE}".into(),
                name: Some("build".into())
            }
        );
        assert_eq!(steps[2].place.to_string(), "Dockerfile:4");
        assert_eq!(
            steps[2].kind,
            Kind::Run(Cmd::Shell("echo a   && echo b".into()))
        );
        match &steps[3].kind {
            Kind::Copy {
                srcs,
                dest,
                from,
                chown,
                ..
            } => {
                assert_eq!(srcs, &["a", "b"]);
                assert_eq!(dest, "/dest/");
                assert_eq!(from.as_deref(), Some("build"));
                assert_eq!(chown.as_deref(), Some("1:2"));
            }
            k => panic!("{k:?}"),
        }
        assert_eq!(
            steps[4].kind,
            Kind::Run(Cmd::Exec(vec![
                "/bin/sh".into(),
                "-c".into(),
                "true".into()
            ]))
        );
        assert_eq!(steps[5].kind, Kind::Ignored("HEALTHCHECK"));
    }

    #[test]
    fn a_broken_dockerfile_names_its_line() {
        let e = parse("docker/Dockerfile", "FROM busybox\n\nCOPY only-one\n").unwrap_err();
        assert_eq!(e.place.to_string(), "docker/Dockerfile:3", "{e}");
        let e = parse("Dockerfile", "RUN true\n").unwrap_err();
        assert!(e.message.contains("FROM"), "{e}");
    }

    #[test]
    fn dockerignore_excludes_below_a_match_and_negation_brings_back() {
        let i = Ignore::parse("# comment\nnode_modules\n*.log\n!keep.log\n**/secret\n").unwrap();
        assert!(i.excludes("node_modules"));
        assert!(i.excludes("node_modules/a/b.js"));
        assert!(i.excludes("debug.log"));
        assert!(!i.excludes("keep.log"));
        assert!(
            !i.excludes("src/debug.log"),
            "*.log matches at the top only"
        );
        assert!(i.excludes("deep/down/secret"));
        assert!(!i.excludes("src/main.rs"));
    }
}
