//! Reading the system's apt sources (one-line and deb822 formats) to find a Debian mirror, so
//! the source package can be fetched through a private sources file without touching the
//! system's apt configuration.

use std::path::{Path, PathBuf};

/// The system's apt source files, in the order apt reads them.
pub const SOURCES_LIST: &str = "/etc/apt/sources.list";
pub const SOURCES_PARTS: &str = "/etc/apt/sources.list.d";

/// One source entry, whichever format it was written in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AptSource {
    /// `deb` and/or `deb-src`.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// Kept only when it names a keyring file; an embedded key cannot go on a one-line entry.
    pub signed_by: Option<String>,
    /// deb822 `Enabled: no` entries are ignored by apt and by us.
    pub enabled: bool,
}

/// The archive to fetch the source package from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub signed_by: Option<String>,
}

impl Mirror {
    /// The single line of the private sources file.
    pub fn deb_src_line(&self, suite: &str, component: &str) -> String {
        match &self.signed_by {
            Some(key) => format!(
                "deb-src [signed-by={key}] {} {suite} {component}\n",
                self.uri
            ),
            None => format!("deb-src {} {suite} {component}\n", self.uri),
        }
    }
}

/// Parses a one-line-format file (`sources.list`, `*.list`).
pub fn parse_one_line(content: &str) -> Vec<AptSource> {
    content.lines().filter_map(parse_one_line_entry).collect()
}

fn parse_one_line_entry(line: &str) -> Option<AptSource> {
    let line = line.split('#').next().unwrap_or("").trim();
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    let mut rest = rest.trim_start();
    let mut signed_by = None;
    if let Some(after) = rest.strip_prefix('[') {
        let (options, tail) = after.split_once(']')?;
        for option in options.split_whitespace() {
            if let Some(value) = option.strip_prefix("signed-by=") {
                signed_by = keyring_path(value);
            }
        }
        rest = tail;
    }
    let mut words = rest.split_whitespace();
    let uri = words.next()?;
    let suite = words.next()?;
    Some(AptSource {
        types: vec![kind.to_string()],
        uris: vec![uri.to_string()],
        suites: vec![suite.to_string()],
        components: words.map(str::to_string).collect(),
        signed_by,
        enabled: true,
    })
}

/// Parses a deb822-format file (`*.sources`): paragraphs of `Field: value` lines, continuation
/// lines starting with whitespace, `#` comment lines anywhere.
pub fn parse_deb822(content: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let flush = |fields: &mut Vec<(String, String)>, out: &mut Vec<AptSource>| {
        if !fields.is_empty() {
            out.push(source_from_fields(fields));
            fields.clear();
        }
    };
    for line in content.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            flush(&mut fields, &mut out);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    flush(&mut fields, &mut out);
    out
}

fn source_from_fields(fields: &[(String, String)]) -> AptSource {
    let list = |name: &str| -> Vec<String> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
            .collect()
    };
    let single = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    AptSource {
        types: list("types"),
        uris: list("uris"),
        suites: list("suites"),
        components: list("components"),
        signed_by: single("signed-by").and_then(|v| keyring_path(v)),
        enabled: single("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no")),
    }
}

fn keyring_path(value: &str) -> Option<String> {
    let value = value.trim();
    (value.starts_with('/') && !value.contains(char::is_whitespace) && !value.contains(','))
        .then(|| value.to_string())
}

/// The first enabled entry serving `suite`/`component`; failing that, one serving a companion
/// suite of the same release (`bookworm-updates` lives in the same archive as `bookworm`).
pub fn choose_mirror(sources: &[AptSource], suite: &str, component: &str) -> Option<Mirror> {
    let serves = |s: &AptSource, wanted: &dyn Fn(&str) -> bool| {
        s.enabled
            && s.types.iter().any(|t| t == "deb" || t == "deb-src")
            && s.components.iter().any(|c| c == component)
            && s.suites.iter().any(|x| wanted(x))
    };
    let companions = ["updates", "backports", "proposed-updates"].map(|c| format!("{suite}-{c}"));
    let exact = |x: &str| x == suite;
    let companion = |x: &str| companions.iter().any(|c| c == x);
    [&exact as &dyn Fn(&str) -> bool, &companion]
        .into_iter()
        .find_map(|wanted| {
            sources.iter().filter(|s| serves(s, wanted)).find_map(|s| {
                let uri = s.uris.iter().find(|u| !u.starts_with("cdrom:"))?;
                Some(Mirror {
                    uri: uri.trim_end_matches('/').to_string(),
                    signed_by: s.signed_by.clone(),
                })
            })
        })
}

/// The files apt reads, in its order: `sources.list`, then `sources.list.d/*.list` and
/// `*.sources` sorted by name (other names, e.g. `.disabled`, are ignored by apt too).
pub fn system_source_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from(SOURCES_LIST)];
    if let Ok(entries) = std::fs::read_dir(SOURCES_PARTS) {
        let mut parts: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "list" || ext == "sources")
            })
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
}

/// Parses one file by its name's format.
pub fn parse_file(path: &Path, content: &str) -> Vec<AptSource> {
    if path.extension().is_some_and(|ext| ext == "sources") {
        parse_deb822(content)
    } else {
        parse_one_line(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn deb822_paragraphs_and_comments() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].types, ["deb"]);
        assert_eq!(s[0].uris, ["http://mirror.example/debian"]);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(s[0].components, ["main"]);
        assert_eq!(
            s[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert!(s[0].enabled);
        assert_eq!(s[1].suites, ["bookworm-security"]);
    }

    #[test]
    fn deb822_embedded_key_disabled_entry_and_case() {
        let text = "\
types: deb deb-src
uris: http://a.example/debian
suites: bookworm
components: main contrib
signed-by:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF
 -----END PGP PUBLIC KEY BLOCK-----
enabled: no


Types: deb
URIs: http://b.example/debian
Suites: bookworm
Components: main
";
        let s = parse_deb822(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].types, ["deb", "deb-src"]);
        assert_eq!(s[0].signed_by, None);
        assert!(!s[0].enabled);
        let m = choose_mirror(&s, "bookworm", "main");
        assert_eq!(m.map(|m| m.uri), Some("http://b.example/debian".into()));
    }

    #[test]
    fn one_line_format_with_options_and_comments() {
        let text = "\
# a comment
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://a.example/debian/ bookworm main contrib # trailing
deb-src http://b.example/debian bookworm main
deb https://c.example/apt cloud-sdk-bookworm main
  
rpm http://nope stable main
";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].uris, ["http://a.example/debian/"]);
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/usr/share/keyrings/k.gpg"));
        assert_eq!(s[1].types, ["deb-src"]);
        assert_eq!(s[2].suites, ["cloud-sdk-bookworm"]);
        let m = choose_mirror(&s, "bookworm", "main");
        assert_eq!(
            m,
            Some(Mirror {
                uri: "http://a.example/debian".into(),
                signed_by: Some("/usr/share/keyrings/k.gpg".into())
            })
        );
    }

    #[test]
    fn choose_mirror_table() {
        let src = |suites: &[&str], comps: &[&str], uri: &str| AptSource {
            types: vec!["deb".into()],
            uris: vec![uri.into()],
            suites: suites.iter().map(|s| s.to_string()).collect(),
            components: comps.iter().map(|s| s.to_string()).collect(),
            signed_by: None,
            enabled: true,
        };
        let cases: Vec<(Vec<AptSource>, Option<&str>)> = vec![
            (vec![], None),
            // Only another release or a foreign repository: nothing usable.
            (vec![src(&["trixie"], &["main"], "http://t")], None),
            (
                vec![src(&["cloud-sdk-bookworm"], &["main"], "http://g")],
                None,
            ),
            // Security archive is a different archive; not a companion.
            (
                vec![src(&["bookworm-security"], &["main"], "http://s")],
                None,
            ),
            // Wrong component.
            (vec![src(&["bookworm"], &["contrib"], "http://c")], None),
            (
                vec![src(&["bookworm"], &["main"], "http://m")],
                Some("http://m"),
            ),
            // Exact suite beats an earlier companion.
            (
                vec![
                    src(&["bookworm-updates"], &["main"], "http://u"),
                    src(&["bookworm"], &["main"], "http://m"),
                ],
                Some("http://m"),
            ),
            (
                vec![src(&["bookworm-updates"], &["main"], "http://u")],
                Some("http://u"),
            ),
            (vec![src(&["bookworm"], &["main"], "cdrom:[Debian]/")], None),
        ];
        for (sources, want) in cases {
            let got = choose_mirror(&sources, "bookworm", "main").map(|m| m.uri);
            assert_eq!(got.as_deref(), want, "{sources:?}");
        }
    }

    #[test]
    fn deb_src_line_carries_keyring() {
        let m = Mirror {
            uri: "http://m.example/debian".into(),
            signed_by: Some("/k.gpg".into()),
        };
        assert_eq!(
            m.deb_src_line("bookworm", "main"),
            "deb-src [signed-by=/k.gpg] http://m.example/debian bookworm main\n"
        );
        let m = Mirror {
            signed_by: None,
            ..m
        };
        assert_eq!(
            m.deb_src_line("bookworm", "main"),
            "deb-src http://m.example/debian bookworm main\n"
        );
    }

    #[test]
    fn file_format_by_extension() {
        assert_eq!(parse_file(Path::new("/x/debian.sources"), DEB822).len(), 2);
        assert_eq!(
            parse_file(Path::new("/x/sources.list"), "deb http://m bookworm main\n").len(),
            1
        );
    }

    proptest::proptest! {
        /// Arbitrary text never panics either parser, and every entry found is complete enough
        /// to build a sources line from.
        #[test]
        fn parsers_total(text in "[ -~\\n\\t]{0,400}") {
            for s in parse_one_line(&text) {
                proptest::prop_assert!(!s.uris.is_empty() && !s.suites.is_empty());
            }
            let _ = parse_deb822(&text);
        }
    }
}
