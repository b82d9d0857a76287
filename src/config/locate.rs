//! Where each field of a YAML document sits in its file.
//!
//! Serde tells us *what* is wrong with a value; validation runs after
//! deserialization, when positions are gone. This index walks the YAML
//! events once more and records, for every field path
//! (`network.ingress[1].port`), the line and column of its value, so that
//! every error can be reported as `FILE:LINE:COL: FIELD: message`.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

/// A 1-based line and column in the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Positions of values by field path, plus the reverse lookup used to name
/// the field that a parse error points at.
#[derive(Debug, Default)]
pub struct FieldLocations {
    by_path: HashMap<String, Position>,
    /// (position of key or value, path), for mapping a serde error position
    /// back to the field it belongs to.
    ordered: Vec<(Position, String)>,
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

impl FieldLocations {
    /// Index `text`. A document that does not parse yields whatever was
    /// indexed before the syntax error; serde reports the error itself.
    pub fn index(text: &str) -> Self {
        let mut index = FieldLocations::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let here = Position {
                line: span.start.line(),
                column: span.start.col() + 1,
            };
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping { key, .. }) = stack.last_mut()
                        && key.is_none()
                    {
                        *key = Some(value.into_owned());
                        let path = Self::child_path(&stack);
                        index.ordered.push((here, path));
                        continue;
                    }
                    let path = Self::value_path(&mut stack);
                    index.record(path, here);
                }
                Event::MappingStart(..) => {
                    let path = Self::value_path(&mut stack);
                    index.record(path.clone(), here);
                    stack.push(Frame::Mapping { path, key: None });
                }
                Event::SequenceStart(..) => {
                    let path = Self::value_path(&mut stack);
                    index.record(path.clone(), here);
                    stack.push(Frame::Sequence { path, index: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::Alias(..) => {
                    let path = Self::value_path(&mut stack);
                    index.record(path, here);
                }
                _ => {}
            }
        }
        index.ordered.sort();
        index
    }

    /// Position of the value at `path`, or of its nearest recorded parent
    /// (a missing field is reported where its parent mapping starts).
    pub fn position(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(pos) = self.by_path.get(path) {
                return Some(*pos);
            }
            if path.is_empty() {
                return None;
            }
            path = &path[..path.rfind(['.', '[']).unwrap_or(0)];
        }
    }

    /// The field whose key or value starts closest before `pos`: the field a
    /// parse error at `pos` is about.
    pub fn field_at(&self, pos: Position) -> Option<&str> {
        let after = self.ordered.partition_point(|(p, _)| *p <= pos);
        after
            .checked_sub(1)
            .map(|i| self.ordered[i].1.as_str())
            .filter(|path| !path.is_empty())
    }

    fn record(&mut self, path: String, pos: Position) {
        self.ordered.push((pos, path.clone()));
        self.by_path.entry(path).or_insert(pos);
    }

    /// The path of the value the next event belongs to; consumes the
    /// pending mapping key or advances the sequence index.
    fn value_path(stack: &mut [Frame]) -> String {
        let path = Self::child_path(stack);
        match stack.last_mut() {
            Some(Frame::Mapping { key, .. }) => *key = None,
            Some(Frame::Sequence { index, .. }) => *index += 1,
            None => {}
        }
        path
    }

    fn child_path(stack: &[Frame]) -> String {
        match stack.last() {
            None => String::new(),
            Some(Frame::Mapping { path, key }) => {
                let key = key.as_deref().unwrap_or("");
                if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                }
            }
            Some(Frame::Sequence { path, index }) => format!("{path}[{index}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
name: vm
network:
  gateway: 10.0.1.1/24
  ingress:
    - name: http
      port: 9080
    - name: ssh
      port: 22
";

    #[test]
    fn values_are_found_by_path() {
        let idx = FieldLocations::index(DOC);
        assert_eq!(idx.position("name"), Some(Position { line: 1, column: 7 }));
        assert_eq!(
            idx.position("network.gateway"),
            Some(Position {
                line: 3,
                column: 12
            })
        );
        assert_eq!(
            idx.position("network.ingress[1].port"),
            Some(Position {
                line: 8,
                column: 13
            })
        );
        assert_eq!(
            idx.position("network.ingress[0].name"),
            Some(Position {
                line: 5,
                column: 13
            })
        );
    }

    #[test]
    fn a_missing_field_falls_back_to_its_parent() {
        let idx = FieldLocations::index(DOC);
        assert_eq!(
            idx.position("network.ingress[1].guest_port"),
            idx.position("network.ingress[1]")
        );
    }

    #[test]
    fn an_error_position_maps_back_to_its_field() {
        let idx = FieldLocations::index(DOC);
        assert_eq!(
            idx.field_at(Position {
                line: 8,
                column: 13
            }),
            Some("network.ingress[1].port")
        );
        assert_eq!(
            idx.field_at(Position { line: 7, column: 7 }),
            Some("network.ingress[1].name")
        );
    }
}
