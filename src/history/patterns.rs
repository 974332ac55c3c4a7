//! The wildcard index of one loop: which live patterns (`prefix*`, the byte-prefix meaning
//! JWT claims give `*`) a topic name falls under, found by walking the name once through a
//! byte trie of the patterns' prefixes.
//!
//! Publishing looks every topic of every event up here, so the cost must not grow with the
//! number of patterns: the walk visits at most one node per byte of the name (at most
//! `max_topic_bytes`), each with at most 64 children (the bytes a topic name may hold), and
//! reports each matching pattern once. The trie holds one node per distinct prefix byte of
//! the live patterns (a node is freed with the last pattern under it), so its size is
//! bounded by the patterns a loop keeps. No I/O here.

use slab::Slab;

use super::topics::TopicId;

/// The root: the empty prefix, where the pattern `*` sits.
const ROOT: usize = 0;

#[derive(Default)]
struct Node {
    /// The next byte of a longer prefix and its node. Short: topic names use 67 bytes.
    children: Vec<(u8, usize)>,
    /// The pattern whose prefix ends here.
    pattern: Option<TopicId>,
    /// Patterns at or below this node; a node other than the root is freed at zero.
    below: usize,
}

/// Live patterns by prefix.
pub(crate) struct Patterns {
    nodes: Slab<Node>,
}

impl Default for Patterns {
    fn default() -> Self {
        let mut nodes = Slab::new();
        nodes.insert(Node::default());
        Patterns { nodes }
    }
}

impl Patterns {
    fn child(&self, node: usize, byte: u8) -> Option<usize> {
        self.nodes[node]
            .children
            .iter()
            .find(|&&(b, _)| b == byte)
            .map(|&(_, next)| next)
    }

    /// Whether no pattern is live (then publishing skips the walk).
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes[ROOT].below == 0
    }

    /// Adds the pattern `prefix*`, kept as topic `id`. The caller adds each prefix once.
    pub(crate) fn insert(&mut self, prefix: &str, id: TopicId) {
        let mut node = ROOT;
        self.nodes[ROOT].below += 1;
        for &byte in prefix.as_bytes() {
            let next = match self.child(node, byte) {
                Some(next) => next,
                None => {
                    let next = self.nodes.insert(Node::default());
                    self.nodes[node].children.push((byte, next));
                    next
                }
            };
            self.nodes[next].below += 1;
            node = next;
        }
        debug_assert!(self.nodes[node].pattern.is_none(), "pattern added twice");
        self.nodes[node].pattern = Some(id);
    }

    /// Removes the pattern `prefix*` and the nodes no other pattern needs.
    pub(crate) fn remove(&mut self, prefix: &str) {
        let mut path = Vec::with_capacity(prefix.len() + 1);
        path.push(ROOT);
        let mut node = ROOT;
        for &byte in prefix.as_bytes() {
            let Some(next) = self.child(node, byte) else {
                debug_assert!(false, "removing a pattern that is not there");
                return;
            };
            path.push(next);
            node = next;
        }
        if self.nodes[node].pattern.take().is_none() {
            debug_assert!(false, "removing a pattern that is not there");
            return;
        }
        for depth in 0..path.len() {
            let node = path[depth];
            self.nodes[node].below -= 1;
            if depth > 0 && self.nodes[node].below == 0 {
                // Nothing under here holds a pattern: only the rest of the path is left.
                self.nodes[path[depth - 1]]
                    .children
                    .retain(|&(_, next)| next != node);
                for &gone in &path[depth..] {
                    self.nodes.remove(gone);
                }
                return;
            }
        }
    }

    /// Calls `visit` with every live pattern whose prefix starts `name`, shortest first.
    pub(crate) fn matching(&self, name: &str, mut visit: impl FnMut(TopicId)) {
        let mut node = ROOT;
        if let Some(id) = self.nodes[ROOT].pattern {
            visit(id);
        }
        for &byte in name.as_bytes() {
            let Some(next) = self.child(node, byte) else {
                return;
            };
            node = next;
            if let Some(id) = self.nodes[node].pattern {
                visit(id);
            }
        }
    }

    /// Trie nodes kept, the root included.
    #[cfg(test)]
    fn nodes(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(patterns: &Patterns, name: &str) -> Vec<TopicId> {
        let mut found = Vec::new();
        patterns.matching(name, |id| found.push(id));
        found
    }

    #[test]
    fn prefixes_match_by_bytes_and_nodes_are_freed() {
        let mut patterns = Patterns::default();
        assert!(patterns.is_empty());
        patterns.insert("prices/", 1);
        patterns.insert("prices/eu", 2);
        patterns.insert("pr", 3);
        patterns.insert("news", 4);
        assert_eq!(matches(&patterns, "prices/eu/de"), [3, 1, 2]);
        assert_eq!(matches(&patterns, "prices/eu"), [3, 1, 2]);
        assert_eq!(matches(&patterns, "prices/us"), [3, 1]);
        assert_eq!(matches(&patterns, "prices"), [3]);
        assert_eq!(matches(&patterns, "p"), Vec::<TopicId>::new());
        assert_eq!(matches(&patterns, "newsletter"), [4]);
        patterns.remove("prices/");
        assert_eq!(matches(&patterns, "prices/eu/de"), [3, 2]);
        patterns.remove("prices/eu");
        assert_eq!(matches(&patterns, "prices/eu/de"), [3]);
        assert_eq!(patterns.nodes(), 1 + 2 + 4, "root, `pr`, `news`");
        patterns.insert("", 5);
        assert_eq!(matches(&patterns, "x"), [5]);
        for prefix in ["pr", "news", ""] {
            patterns.remove(prefix);
        }
        assert!(patterns.is_empty());
        assert_eq!(patterns.nodes(), 1);
    }
}
