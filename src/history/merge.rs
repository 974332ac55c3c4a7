//! Reading a subscriber's topics as one stream: the k-way merge over the topics' rings
//! that visits every kept frame after a cursor once, in sequence order.
//!
//! A subscriber of several topics sees an event published to more than one of them once;
//! the merge needs no allocation for subscriptions up to the default width. No I/O here.

use super::ring::{Ring, Seq};
use super::topics::{StreamTopic, Topics};
use crate::sse::Frame;

/// Calls `visit` with every kept frame after `cursor` across `topics`, in sequence order,
/// each event once, until `visit` returns false.
pub(crate) fn for_each_after<'t>(
    table: &'t Topics,
    topics: &[StreamTopic],
    cursor: Seq,
    mut visit: impl FnMut(Seq, &'t Frame) -> bool,
) {
    if let [only] = topics {
        let Some(topic) = table.get(only.id) else {
            return;
        };
        let mut index = topic.ring.first_after(cursor);
        while let Some(entry) = topic.ring.get(index) {
            if !visit(entry.seq, &entry.frame) {
                return;
            }
            index += 1;
        }
        return;
    }
    // A k-way merge over the topics' rings. Subscriptions up to the default width merge
    // in small stack arrays (no allocation and little to zero per write); wider ones, which
    // only a raised `max_topics_per_subscription` allows, use the heap.
    const INLINE: usize = crate::config::TOPICS_PER_SUBSCRIPTION_DEFAULT;
    if topics.len() <= INLINE {
        let mut rings: [Option<&'t Ring>; INLINE] = [None; INLINE];
        let mut positions = [0usize; INLINE];
        merge(table, topics, cursor, &mut rings, &mut positions, visit);
    } else {
        let mut rings = vec![None; topics.len()];
        let mut positions = vec![0usize; topics.len()];
        merge(table, topics, cursor, &mut rings, &mut positions, visit);
    }
}

/// The k-way merge of [`for_each_after`] in caller-provided space (at least one slot per
/// topic).
fn merge<'t>(
    table: &'t Topics,
    topics: &[StreamTopic],
    cursor: Seq,
    rings: &mut [Option<&'t Ring>],
    positions: &mut [usize],
    mut visit: impl FnMut(Seq, &'t Frame) -> bool,
) {
    let mut width = 0;
    for (topic, (ring, position)) in topics
        .iter()
        .filter_map(|t| table.get(t.id))
        .zip(rings.iter_mut().zip(positions.iter_mut()))
    {
        *ring = Some(&topic.ring);
        *position = topic.ring.first_after(cursor);
        width += 1;
    }
    let rings = &rings[..width];
    let positions = &mut positions[..width];
    loop {
        let mut next: Option<(Seq, &'t Frame)> = None;
        for (ring, &position) in rings.iter().flatten().zip(positions.iter()) {
            if let Some(entry) = ring.get(position) {
                if next.is_none_or(|(seq, _)| entry.seq < seq) {
                    next = Some((entry.seq, &entry.frame));
                }
            }
        }
        let Some((seq, frame)) = next else {
            return;
        };
        for (ring, position) in rings.iter().flatten().zip(positions.iter_mut()) {
            if ring.get(*position).is_some_and(|entry| entry.seq == seq) {
                *position += 1;
            }
        }
        if !visit(seq, frame) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::fixtures::{frame, subscribe, table};

    /// Subscriptions wider than the inline width merge the same way (on the heap).
    #[test]
    fn wide_and_narrow_merges_agree() {
        for width in [2usize, 16, 17, 40] {
            let mut table = table();
            let names: Vec<String> = (0..width).map(|i| format!("t{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let topics = subscribe(&mut table, &refs);
            for seq in 1..=120u128 {
                // Each event goes to one or two of the topics.
                let a = names[seq as usize % width].as_str();
                let b = names[(seq as usize * 7) % width].as_str();
                let mut to: Vec<Box<str>> = vec![a.into()];
                if b != a {
                    to.push(b.into());
                }
                table.append(seq, &to, &frame(seq));
            }
            let mut seen = Vec::new();
            for_each_after(&table, &topics, 10, |seq, _| {
                seen.push(seq);
                true
            });
            assert_eq!(seen, (11..=120).collect::<Vec<_>>(), "width {width}");
        }
    }

    #[test]
    fn merge_visits_union_once_in_order() {
        let mut table = table();
        let topics = subscribe(&mut table, &["a", "b"]);
        table.append(1, &["a".into()], &frame(1));
        table.append(2, &["a".into(), "b".into()], &frame(2));
        table.append(3, &["b".into()], &frame(3));
        table.append(4, &["c".into()], &frame(4));
        let mut seen = Vec::new();
        for_each_after(&table, &topics, 0, |seq, _| {
            seen.push(seq);
            true
        });
        assert_eq!(seen, [1, 2, 3]);
        seen.clear();
        for_each_after(&table, &topics, 2, |seq, _| {
            seen.push(seq);
            true
        });
        assert_eq!(seen, [3]);
    }
}
