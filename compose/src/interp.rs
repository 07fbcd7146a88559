//! Variable substitution as Docker's CLI does it in compose files: `$$`,
//! `$V`, `${V}`, `${V:-default}`, `${V-default}`, `${V:?error}`,
//! `${V?error}`, with defaults that may hold further substitutions.
//! Applied to values, never to keys.

use crate::read::{bad, join, R};
use crate::yaml::{Kind, Node};

/// Where variables come from: the environment first, then `.env`.
pub trait Lookup {
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Lookup for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

pub(crate) fn tree(n: &mut Node, path: &str, env: &dyn Lookup) -> R<()> {
    let at = Node {
        kind: crate::yaml::Kind::Null,
        line: n.line,
        file: n.file,
    };
    match &mut n.kind {
        Kind::Scalar { text, .. } if text.contains('$') => {
            *text = substitute(text, env).map_err(|e| bad(&at, path, e))?;
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                tree(item, &format!("{path}[{i}]"), env)?;
            }
        }
        Kind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                tree(v, &join(path, &k.name), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// How deep `${A:-${B:-…}}` may nest.
pub const MAX_NESTING: usize = 16;

/// Substitutes one string; the error says what is wrong with it.
pub fn substitute(s: &str, env: &dyn Lookup) -> Result<String, String> {
    substitute_at(s, env, 0)
}

fn substitute_at(s: &str, env: &dyn Lookup, depth: usize) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "interpolation nested deeper than {MAX_NESTING} levels"
        ));
    }
    let invalid = || {
        format!(
            "invalid interpolation format in {s:?}: you may need to escape any $ with another $"
        )
    };
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(invalid)?;
            out.push_str(&braced(&body[..end], env, depth).map_err(|e| e.unwrap_or_else(invalid))?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(invalid());
            }
            out.push_str(&env.get(&after[..len]).unwrap_or_default());
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

/// The index of the `}` that closes a `${`, counting nested `${…}`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// `None` as the error means "invalid format" (the caller words it).
fn braced(body: &str, env: &dyn Lookup, depth: usize) -> Result<String, Option<String>> {
    let len = name_len(body);
    if len == 0 {
        return Err(None);
    }
    let (name, op) = body.split_at(len);
    let value = env.get(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let sub = |w: &str| substitute_at(w, env, depth + 1).map_err(Some);
    let required = |w: &str, unset: bool| -> Result<String, Option<String>> {
        if unset {
            let why = sub(w)?;
            Err(Some(if why.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {why}")
            }))
        } else {
            Ok(value.clone().unwrap_or_default())
        }
    };
    if op.is_empty() {
        Ok(value.unwrap_or_default())
    } else if let Some(d) = op.strip_prefix(":-") {
        if set_nonempty {
            Ok(value.unwrap_or_default())
        } else {
            sub(d)
        }
    } else if let Some(d) = op.strip_prefix('-') {
        match value {
            Some(v) => Ok(v),
            None => sub(d),
        }
    } else if let Some(e) = op.strip_prefix(":?") {
        required(e, !set_nonempty)
    } else if let Some(e) = op.strip_prefix('?') {
        required(e, value.is_none())
    } else {
        Err(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn s(t: &str) -> Result<String, String> {
        substitute(t, &env)
    }

    #[test]
    fn the_forms_docker_knows() {
        assert_eq!(s("img:$TAG").unwrap(), "img:1.2");
        assert_eq!(s("img:${TAG}-x").unwrap(), "img:1.2-x");
        assert_eq!(s("$$TAG costs $$5").unwrap(), "$TAG costs $5");
        assert_eq!(s("${UNSET:-dflt}").unwrap(), "dflt");
        assert_eq!(s("${EMPTY:-dflt}").unwrap(), "dflt");
        assert_eq!(s("${EMPTY-dflt}").unwrap(), "");
        assert_eq!(s("${UNSET-dflt}").unwrap(), "dflt");
        assert_eq!(s("${UNSET}").unwrap(), "");
        assert_eq!(s("${UNSET:-${ALSO:-${TAG}}}").unwrap(), "1.2");
        assert_eq!(s("${EMPTY?x}").unwrap(), "");
    }

    #[test]
    fn required_variables_name_themselves() {
        let e = s("${DB_PASS:?set it in .env}").unwrap_err();
        assert_eq!(
            e,
            "required variable DB_PASS is missing a value: set it in .env"
        );
        assert!(s("${EMPTY:?}").unwrap_err().contains("EMPTY"));
        assert!(s("${UNSET?}").is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "${A:-".repeat(1000) + &"}".repeat(1000);
        assert!(s(&deep).unwrap_err().contains("deeper"));
        let ok = "${A:-".repeat(10) + "x" + &"}".repeat(10);
        assert_eq!(s(&ok).unwrap(), "x");
    }

    #[test]
    fn broken_forms_are_errors() {
        for bad in [
            "${", "${TAG", "$", "a $ b", "${}", "${1A}", "${TAG:x}", "${TAG!}",
        ] {
            assert!(s(bad).is_err(), "{bad}");
        }
    }
}
