//! Two file formats for variables: `.env` beside a compose file (as
//! `docker compose` reads it: quotes, `export`, comments) and `env_file:`
//! (as `docker run --env-file` reads it: everything after `=` verbatim).

/// Files of variables are small; a bigger one is a mistake.
pub const MAX_ENV_FILE: usize = 1 << 20;

/// Parses a `.env` file into name/value pairs, in order.
pub fn dotenv(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=VALUE, got {raw:?}", i + 1));
        };
        let k = k.trim();
        if !valid_name(k) {
            return Err(format!("line {}: invalid variable name {k:?}", i + 1));
        }
        let v = v.trim();
        let value = if let Some(q) = v.strip_prefix('"') {
            unescape_double(q)
                .ok_or_else(|| format!("line {}: unterminated \" in {raw:?}", i + 1))?
        } else if let Some(q) = v.strip_prefix('\'') {
            let end = q
                .find('\'')
                .ok_or_else(|| format!("line {}: unterminated ' in {raw:?}", i + 1))?;
            q[..end].to_string()
        } else {
            match v.find(" #") {
                Some(c) => v[..c].trim_end().to_string(),
                None => v.to_string(),
            }
        };
        out.push((k.to_string(), value));
    }
    Ok(out)
}

fn unescape_double(q: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = q.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                o => out.push(o),
            },
            c => out.push(c),
        }
    }
    None
}

fn valid_name(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(f) if f == '_' || f.is_ascii_alphabetic())
        && c.all(|c| c == '_' || c == '.' || c == '-' || c.is_ascii_alphanumeric())
}

/// An `env_file:` as Docker's CLI reads it: `NAME=VALUE` with the value
/// verbatim (quotes included), `NAME` alone takes the variable from the
/// environment (left out when unset), `#` starts a comment line.
pub fn env_file(
    text: &str,
    env: &dyn crate::interp::Lookup,
) -> Result<Vec<(String, String)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line.trim_end(), None),
        };
        if k.is_empty() || k.chars().any(char::is_whitespace) {
            return Err(format!(
                "line {}: variable {k:?} is empty or contains spaces",
                i + 1
            ));
        }
        match v {
            Some(v) => out.push((k.to_string(), v.to_string())),
            None => {
                if let Some(v) = env.get(k) {
                    out.push((k.to_string(), v));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_quotes_comments_and_export() {
        let v =
            dotenv("# c\nA=1\nexport B = two words # note\nC=\"x\\ny\" \nD='$raw'\nE=\n").unwrap();
        assert_eq!(
            v,
            [
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x\ny".into()),
                ("D".into(), "$raw".into()),
                ("E".into(), String::new())
            ]
        );
        assert!(dotenv("NOEQUALS\n").is_err());
        assert!(dotenv("A=\"open\n").is_err());
        assert!(dotenv("1A=x\n").is_err());
    }

    #[test]
    fn env_file_is_verbatim() {
        let env = |k: &str| (k == "HOME_SET").then(|| "yes".to_string());
        let v = env_file("A=\"quoted\" # kept\n  B=x=y\nHOME_SET\nUNSET\n", &env).unwrap();
        assert_eq!(
            v,
            [
                ("A".into(), "\"quoted\" # kept".into()),
                ("B".into(), "x=y".into()),
                ("HOME_SET".into(), "yes".into())
            ]
        );
        assert!(env_file("BAD KEY=1\n", &env).is_err());
    }
}
