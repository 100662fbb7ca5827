//! A release as Flux's tutorials make it: one commit that changes `images[0].newTag` in an
//! app's kustomization.yaml (Flux's image automation makes the same edit). [`bump_tag`] changes
//! that one value and keeps the rest of the file byte for byte, comments and image-policy
//! markers included, so that the commit's diff is one line.

use std::path::Path;

use anyhow::Context as _;

/// Whether `tag` is a valid image tag (the OCI distribution grammar).
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Sets `images[0].newTag` of the kustomization file in place (a release, as an image
/// automation commit makes it), keeping everything else in the file as it was.
pub fn bump_tag(kustomization: &Path, new_tag: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(kustomization)
        .with_context(|| format!("cannot read {}", kustomization.display()))?;
    let bumped = bump_tag_text(&text, new_tag)
        .map_err(|m| anyhow::anyhow!("{}: {m}", kustomization.display()))?;
    std::fs::write(kustomization, bumped)
        .with_context(|| format!("cannot write {}", kustomization.display()))
}

/// [`bump_tag`] on the file's text: replaces the value of `newTag` in the first `images`
/// entry, or adds the key after the entry's first line. The result is checked by parsing: the
/// same document but for that one value, or an error.
pub fn bump_tag_text(text: &str, new_tag: &str) -> Result<String, String> {
    if !valid_tag(new_tag) {
        return Err(format!(
            "{new_tag:?} is not an image tag (letters, digits, '_', '.', '-'; 128 at most)"
        ));
    }
    let before: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if before
        .get("images")
        .and_then(|i| i.as_sequence())
        .is_none_or(|s| s.is_empty())
    {
        return Err("no images entry to bump (images[0] is missing)".into());
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let images = lines
        .iter()
        .position(|l| l.trim_end() == "images:" || l.starts_with("images:"))
        .ok_or("no top-level `images:` line")?;
    // The first entry: the first line below `images:` that starts a sequence item.
    let (first, dash_indent) = lines
        .iter()
        .enumerate()
        .skip(images + 1)
        .find_map(|(i, l)| {
            let trimmed = l.trim_start();
            trimmed
                .starts_with("- ")
                .then(|| (i, l.len() - trimmed.len()))
        })
        .ok_or("images: the first entry is not a block sequence item (`- name: ...`)")?;
    // The column of the entry's keys: after the dash and its spaces.
    let after_dash = &lines[first][dash_indent + 1..];
    let key_col = dash_indent + 1 + (after_dash.len() - after_dash.trim_start().len());
    // The entry's lines: the first, then those indented deeper than its dash.
    let mut end = first + 1;
    while end < lines.len() {
        let l = lines[end];
        let blank = l.trim().is_empty() || l.trim_start().starts_with('#');
        let indent = l.len() - l.trim_start().len();
        if !blank && indent <= dash_indent {
            break;
        }
        end += 1;
    }
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let tag_line = (first..end).find(|&i| {
        lines[i].len() >= key_col
            && lines[i][key_col..].starts_with("newTag:")
            && (i == first || lines[i][..key_col].trim().is_empty())
    });
    // A tag YAML would read as something else than a string (1.10, true) gets quotes.
    let plain_ok = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(new_tag)
        .is_ok_and(|v| v.as_str() == Some(new_tag));
    match tag_line {
        Some(i) => {
            let line = &lines[i];
            let at = line.find("newTag:").unwrap_or(0) + "newTag:".len();
            let rest = &line[at..];
            let value = rest.trim_start();
            let quote = match value.chars().next() {
                Some(q @ ('"' | '\'')) => Some(q),
                _ => None,
            };
            // Keep a trailing comment, drop the old value.
            let comment = match quote {
                Some(q) => value[1..]
                    .find(q)
                    .map(|e| value[e + 2..].trim_end_matches(['\n', '\r']).to_string()),
                None => value
                    .find(" #")
                    .map(|c| value[c..].trim_end_matches(['\n', '\r']).to_string()),
            }
            .unwrap_or_default();
            let newline = if line.ends_with("\r\n") {
                "\r\n"
            } else if line.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            let q = match quote {
                Some(q) => q.to_string(),
                None if plain_ok => String::new(),
                None => "\"".to_string(),
            };
            out[i] = format!("{} {q}{new_tag}{q}{comment}{newline}", &line[..at]);
        }
        None => {
            let newline = if lines[first].ends_with('\n') {
                ""
            } else {
                "\n"
            };
            out[first].push_str(newline);
            out.insert(
                first + 1,
                format!("{}newTag: \"{new_tag}\"\n", " ".repeat(key_col)),
            );
        }
    }
    let result: String = out.concat();
    let after: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&result).map_err(|e| format!("bumping broke the file: {e}"))?;
    let mut expected = before.clone();
    if let Some(entry) = expected
        .get_mut("images")
        .and_then(|i| i.as_sequence_mut())
        .and_then(|s| s.first_mut())
        .and_then(|e| e.as_mapping_mut())
    {
        entry.insert("newTag".into(), new_tag.into());
    }
    if after != expected {
        return Err(
            "cannot bump images[0].newTag in this layout without touching anything else".into(),
        );
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn new_tag_of(text: &str) -> Option<String> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        v["images"][0]["newTag"].as_str().map(String::from)
    }

    #[test]
    fn bump_changes_one_value_and_keeps_the_rest_of_the_file() {
        let table: [(&str, &str); 7] = [
            // The example's own layout.
            (
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - a.yaml\nimages:\n  - name: ghcr.io/stefanprodan/podinfo\n    newTag: 6.0.0\n",
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - a.yaml\nimages:\n  - name: ghcr.io/stefanprodan/podinfo\n    newTag: 6.0.1\n",
            ),
            // Dash at column 0, quotes and a comment kept, the second entry untouched.
            (
                "# release\nimages:\n- name: podinfo\n  newTag: \"6.0.0\" # {\"$imagepolicy\": \"flux-system:podinfo:tag\"}\n- name: other\n  newTag: 1.0.0\n",
                "# release\nimages:\n- name: podinfo\n  newTag: \"6.0.1\" # {\"$imagepolicy\": \"flux-system:podinfo:tag\"}\n- name: other\n  newTag: 1.0.0\n",
            ),
            // newTag first in the entry, single quotes.
            (
                "images:\n  - newTag: '6.0.0'\n    name: podinfo\nnamespace: prod\n",
                "images:\n  - newTag: '6.0.1'\n    name: podinfo\nnamespace: prod\n",
            ),
            // No newTag yet: added, the rest unchanged.
            (
                "images:\n  - name: podinfo\n    newName: reg/podinfo\nresources: [a.yaml]\n",
                "images:\n  - name: podinfo\n    newTag: \"6.0.1\"\n    newName: reg/podinfo\nresources: [a.yaml]\n",
            ),
            // A nested newTag of another entry is not the first entry's.
            (
                "images:\n  - name: podinfo\n\n    # a comment inside the entry\n    newTag: 1\n",
                "images:\n  - name: podinfo\n\n    # a comment inside the entry\n    newTag: 6.0.1\n",
            ),
            // CRLF line ends survive.
            (
                "images:\r\n  - name: podinfo\r\n    newTag: 6.0.0\r\n",
                "images:\r\n  - name: podinfo\r\n    newTag: 6.0.1\r\n",
            ),
            // No newline at the end of the file.
            (
                "images:\n  - name: podinfo",
                "images:\n  - name: podinfo\n    newTag: \"6.0.1\"\n",
            ),
        ];
        for (before, want) in table {
            assert_eq!(
                bump_tag_text(before, "6.0.1").as_deref(),
                Ok(want),
                "{before:?}"
            );
        }
    }

    #[test]
    fn a_tag_yaml_would_read_as_a_number_is_quoted() {
        let out = bump_tag_text("images:\n  - name: p\n    newTag: 1.0.0\n", "1.10").unwrap();
        assert_eq!(out, "images:\n  - name: p\n    newTag: \"1.10\"\n");
        assert_eq!(new_tag_of(&out).as_deref(), Some("1.10"));
    }

    #[test]
    fn bump_refuses_what_it_cannot_do_safely() {
        let table = [
            (
                "images:\n  - name: p\n",
                "6.0.1 && rm",
                "is not an image tag",
            ),
            ("images:\n  - name: p\n", "", "is not an image tag"),
            ("resources: [a.yaml]\n", "1", "no images entry"),
            ("images: []\n", "1", "no images entry"),
            (
                "images: [{name: p, newTag: '1'}]\n",
                "2",
                "not a block sequence item",
            ),
            ("images: [\n", "1", "not YAML"),
        ];
        for (text, tag, want) in table {
            let err = bump_tag_text(text, tag).unwrap_err();
            assert!(err.contains(want), "{text:?} {tag:?}: {err}");
        }
    }

    #[test]
    fn bump_tag_rewrites_the_file() {
        let root = std::env::temp_dir().join(format!("serin-release-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let file = root.join("kustomization.yaml");
        std::fs::write(&file, "images:\n  - name: p\n    newTag: 1.0.0\n").unwrap();
        bump_tag(&file, "1.0.1").unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "images:\n  - name: p\n    newTag: 1.0.1\n"
        );
        assert!(bump_tag(&root.join("missing.yaml"), "1").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    proptest! {
        /// Whatever the layout of the entry, the bump sets images[0].newTag and nothing else.
        #[test]
        fn bump_sets_exactly_the_first_tag(
            tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
            old in prop::option::of("[0-9]{1,2}\\.[0-9]{1,2}(\\.[0-9])?"),
            dash in 0usize..3,
            gap in 1usize..3,
            quote in prop::sample::select(vec!["", "\"", "'"]),
            tag_first in any::<bool>(),
            comment in any::<bool>(),
            second in any::<bool>(),
        ) {
            let pad = " ".repeat(dash);
            let key = " ".repeat(dash + 1 + gap);
            let name = "name: ghcr.io/stefanprodan/podinfo";
            let tag_line = old.as_ref().map(|o| format!(
                "newTag: {quote}{o}{quote}{}",
                if comment { " # {\"$imagepolicy\": \"x\"}" } else { "" }
            ));
            let mut entry = match (&tag_line, tag_first) {
                (Some(t), true) => format!("{pad}-{}{t}\n{key}{name}\n", " ".repeat(gap)),
                (Some(t), false) => format!("{pad}-{}{name}\n{key}{t}\n", " ".repeat(gap)),
                (None, _) => format!("{pad}-{}{name}\n", " ".repeat(gap)),
            };
            if second {
                entry.push_str(&format!("{pad}- name: other\n{pad}  newTag: \"9\"\n"));
            }
            let text = format!("resources:\n  - a.yaml\nimages:\n{entry}namespace: prod\n");
            let out = bump_tag_text(&text, &tag).unwrap();
            prop_assert_eq!(new_tag_of(&out), Some(tag.clone()));
            let (a, b): (serde_yaml_ng::Value, serde_yaml_ng::Value) =
                (serde_yaml_ng::from_str(&text).unwrap(), serde_yaml_ng::from_str(&out).unwrap());
            prop_assert_eq!(&a["resources"], &b["resources"]);
            prop_assert_eq!(&a["namespace"], &b["namespace"]);
            prop_assert_eq!(&a["images"][0]["name"], &b["images"][0]["name"]);
            prop_assert_eq!(&a["images"][1], &b["images"][1]);
            prop_assert_eq!(text.lines().count() + usize::from(old.is_none()), out.lines().count());
        }
    }
}
