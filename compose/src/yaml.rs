//! YAML into a tree that remembers where each node was written, so an
//! error can name the file, the line and the key.
//!
//! Built on yaml-rust2's event parser; we resolve aliases and YAML 1.1
//! merge keys (`<<: *base`, which compose files use with `x-` fields)
//! ourselves, with a budget: a file of aliases to aliases must not expand
//! into gigabytes ("billion laughs").

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// The most nodes a file may expand to once aliases are resolved.
pub const MAX_NODES: usize = 200_000;
/// The deepest nesting accepted (aliases included).
pub const MAX_DEPTH: usize = 64;
/// The most scalar text a file may expand to (an alias of a long string
/// many times over is as bad as many nodes).
pub const MAX_BYTES: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: Kind,
    /// 1-based line where the node starts.
    pub line: usize,
    /// Which of the loaded files it came from (an index the loader keeps).
    pub file: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Null,
    /// A scalar's text; `plain` when written unquoted (only plain scalars
    /// read as numbers, booleans or null the way YAML does).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// In file order; keys are unique.
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: usize,
}

impl Node {
    /// Marks every node of the tree as read from file number `file`.
    pub fn set_file(&mut self, file: usize) {
        self.file = file;
        match &mut self.kind {
            Kind::Seq(items) => items.iter_mut().for_each(|i| i.set_file(file)),
            Kind::Map(entries) => entries.iter_mut().for_each(|(_, v)| v.set_file(file)),
            _ => {}
        }
    }
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.kind, Kind::Null)
    }

    /// What the node is, for "expected X, got Y" messages.
    pub fn what(&self) -> String {
        match &self.kind {
            Kind::Null => "nothing".into(),
            Kind::Scalar { text, .. } => format!("{text:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }
}

#[derive(Debug)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

fn err(m: &Marker, msg: impl Into<String>) -> YamlError {
    YamlError {
        line: m.line(),
        col: m.col() + 1,
        msg: msg.into(),
    }
}

/// Parses one document (an empty file is an empty mapping).
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut b = Builder {
        p: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        bytes: 0,
    };
    let mut root = None;
    loop {
        let (ev, m) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            ev => {
                if root.is_some() {
                    return Err(err(&m, "more than one YAML document in the file"));
                }
                root = Some(b.node(ev, m, 0)?);
            }
        }
    }
    Ok(root.unwrap_or(Node {
        kind: Kind::Map(Vec::new()),
        line: 1,
        file: 0,
    }))
}

struct Builder<'a> {
    p: Parser<std::str::Chars<'a>>,
    /// Each anchored node with its height.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    bytes: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), YamlError> {
        self.p.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            msg: e.info().to_string(),
        })
    }

    fn count(&mut self, m: &Marker, n: usize, bytes: usize) -> Result<(), YamlError> {
        self.nodes += n;
        self.bytes += bytes;
        if self.nodes > MAX_NODES || self.bytes > MAX_BYTES {
            return Err(err(
                m,
                format!("the file expands to more than {MAX_NODES} values or {MAX_BYTES} bytes (aliases of aliases?)"),
            ));
        }
        Ok(())
    }

    fn node(&mut self, ev: Event, m: Marker, depth: usize) -> Result<Node, YamlError> {
        if depth > MAX_DEPTH {
            return Err(err(&m, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.count(&m, 1, 0)?;
        let line = m.line();
        let (node, anchor) = match ev {
            Event::Alias(id) => {
                let Some((n, height)) = self.anchors.get(&id).cloned() else {
                    return Err(err(&m, "alias to an unknown anchor"));
                };
                if depth + height > MAX_DEPTH {
                    return Err(err(&m, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                let (nodes, bytes) = size(&n);
                self.count(&m, nodes, bytes)?;
                return Ok(n);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == TScalarStyle::Plain && !forced_str;
                let kind = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Kind::Null
                } else {
                    Kind::Scalar { text, plain }
                };
                (
                    Node {
                        kind,
                        line,
                        file: 0,
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, m) = self.next()?;
                    if ev == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(ev, m, depth + 1)?);
                }
                (
                    Node {
                        kind: Kind::Seq(items),
                        line,
                        file: 0,
                    },
                    anchor,
                )
            }
            Event::MappingStart(anchor, _) => (self.map(line, depth)?, anchor),
            other => return Err(err(&m, format!("unexpected YAML event {other:?}"))),
        };
        if let Kind::Scalar { text, .. } = &node.kind {
            self.count(&m, 0, text.len())?;
        }
        if anchor > 0 {
            let h = height(&node);
            self.anchors.insert(anchor, (node.clone(), h));
        }
        Ok(node)
    }

    fn map(&mut self, line: usize, depth: usize) -> Result<Node, YamlError> {
        let mut own: Vec<(Key, Node)> = Vec::new();
        let mut merged: Vec<(Key, Node)> = Vec::new();
        loop {
            let (ev, m) = self.next()?;
            if ev == Event::MappingEnd {
                break;
            }
            let key = match self.node(ev, m, depth + 1)? {
                Node {
                    kind: Kind::Scalar { text, .. },
                    line,
                    ..
                } => Key { name: text, line },
                Node {
                    kind: Kind::Null, ..
                } => Key {
                    name: String::new(),
                    line: m.line(),
                },
                _ => return Err(err(&m, "a mapping key must be a plain value")),
            };
            let (ev, vm) = self.next()?;
            let value = self.node(ev, vm, depth + 1)?;
            if key.name == "<<" {
                // Earlier sources win over later ones; the map's own keys
                // win over all of them.
                let sources = match value.kind {
                    Kind::Map(entries) => vec![entries],
                    Kind::Seq(items) => items
                        .into_iter()
                        .map(|i| match i.kind {
                            Kind::Map(entries) => Ok(entries),
                            _ => Err(err(&vm, "`<<` merges mappings only")),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(err(&vm, "`<<` merges mappings only")),
                };
                for entries in sources {
                    for (k, v) in entries {
                        if !merged.iter().any(|(o, _)| o.name == k.name) {
                            merged.push((k, v));
                        }
                    }
                }
                continue;
            }
            if let Some((first, _)) = own.iter().find(|(o, _)| o.name == key.name) {
                return Err(YamlError {
                    line: key.line,
                    col: m.col() + 1,
                    msg: format!(
                        "key {:?} is already defined at line {}",
                        key.name, first.line
                    ),
                });
            }
            own.push((key, value));
        }
        for (k, v) in merged {
            if !own.iter().any(|(o, _)| o.name == k.name) {
                own.push((k, v));
            }
        }
        Ok(Node {
            kind: Kind::Map(own),
            line,
            file: 0,
        })
    }
}

/// Nodes and scalar bytes in a tree.
fn size(n: &Node) -> (usize, usize) {
    match &n.kind {
        Kind::Seq(items) => items
            .iter()
            .map(size)
            .fold((1, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        Kind::Map(entries) => entries.iter().fold((1, 0), |a, (k, v)| {
            let (n, b) = size(v);
            (a.0 + 1 + n, a.1 + k.name.len() + b)
        }),
        Kind::Scalar { text, .. } => (1, text.len()),
        Kind::Null => (1, 0),
    }
}

/// Levels below and including a node.
fn height(n: &Node) -> usize {
    match &n.kind {
        Kind::Seq(items) => 1 + items.iter().map(height).max().unwrap_or(0),
        Kind::Map(entries) => 1 + entries.iter().map(|(_, v)| height(v)).max().unwrap_or(0),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(n: &Node) -> &str {
        match &n.kind {
            Kind::Scalar { text, .. } => text,
            k => panic!("not a scalar: {k:?}"),
        }
    }

    #[test]
    fn lines_anchors_and_merge_keys() {
        let doc = "x-base: &base\n  image: a\n  replicas: 2\nweb:\n  <<: *base\n  replicas: 3\n";
        let n = parse(doc).unwrap();
        let web = n.get("web").unwrap();
        assert_eq!(web.line, 5);
        assert_eq!(scalar(web.get("image").unwrap()), "a");
        assert_eq!(scalar(web.get("replicas").unwrap()), "3", "own keys win");
        assert_eq!(web.get("replicas").unwrap().line, 6);
    }

    #[test]
    fn quoted_null_is_a_string_and_plain_null_is_null() {
        let n = parse("a: ~\nb: '~'\nc:\n").unwrap();
        assert!(n.get("a").unwrap().is_null());
        assert_eq!(scalar(n.get("b").unwrap()), "~");
        assert!(n.get("c").unwrap().is_null());
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_lines() {
        let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.msg.contains("line 1"), "{}", e.msg);
    }

    #[test]
    fn alias_bombs_stop_at_the_budget() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            doc += &format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
        }
        let e = parse(&doc).unwrap_err();
        assert!(e.msg.contains("more than"), "{}", e.msg);
    }

    #[test]
    fn a_long_string_aliased_many_times_stops_at_the_byte_budget() {
        let big = "x".repeat(1 << 20);
        let mut doc = format!("a: &a {big}\nb: [");
        doc += &vec!["*a"; 40].join(", ");
        doc += "]\n";
        let e = parse(&doc).unwrap_err();
        assert!(e.msg.contains("bytes"), "{}", e.msg);
    }

    #[test]
    fn aliases_cannot_nest_past_the_depth_limit() {
        let mut doc = String::from("a0: &a0 [[[[[[[[[[x]]]]]]]]]]\n");
        for i in 1..10 {
            doc += &format!("a{i}: &a{i} [[[[[[[[[*a{}]]]]]]]]]\n", i - 1);
        }
        assert!(parse(&doc).unwrap_err().msg.contains("deeper"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&doc).unwrap_err().msg.contains("deeper"));
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }
}
