//! What a [`Handle`] does: publish (one event or a batch), read statistics and presence,
//! replay a topic's history, reload token keys and shut the server down, from any thread.

use super::*;

impl Handle {
    /// Rereads the token key files (`subscribe_public_key`, `publish_public_key`, JWKS
    /// files) and refetches the JWKS URLs, on the server's key thread: returns at once. A
    /// file or URL that fails keeps its last keys (and is logged). `herald serve` calls
    /// this on SIGHUP. Does nothing when no public key is configured.
    pub fn reload_keys(&self) {
        self.shared.auth.reload();
    }

    /// Publishes an event to its topics and returns the id subscribers will see.
    ///
    /// With the Redis bus this waits for Redis to store the event (a round trip), and
    /// fails with [`PublishError::Unavailable`] while Redis cannot be reached.
    pub fn publish(&self, event: &Event) -> Result<EventId, PublishError> {
        let outgoing = publish::prepare(event, &self.shared.limits.publish)?;
        let mut ids = self.submit(vec![outgoing])?;
        // A bus answers one id per event.
        ids.pop().ok_or(PublishError::Unavailable)
    }

    /// Publishes several events at once and returns their ids, in order: all of them or,
    /// on any error, none. Every event is checked first (the first invalid one's error is
    /// returned); ids are consecutive on their topics, with no other publish between them
    /// (one lock with the embedded bus, one `MULTI`/`EXEC` with Redis). More than
    /// `max_batch_events` events is [`PublishError::BatchTooLarge`]; an empty batch
    /// publishes nothing.
    ///
    /// With the Redis bus this waits for Redis to store the events (a round trip).
    pub fn publish_batch(&self, events: &[Event]) -> Result<Vec<EventId>, PublishError> {
        if events.len() > self.shared.limits.batch_events_max {
            return Err(PublishError::BatchTooLarge);
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let outgoing = events
            .iter()
            .map(|event| publish::prepare(event, &self.shared.limits.publish))
            .collect::<Result<Vec<_>, _>>()?;
        self.submit(outgoing)
    }

    fn submit(&self, events: Vec<crate::bus::Outgoing<'_>>) -> Result<Vec<EventId>, PublishError> {
        match self.shared.bus.publish(events, None) {
            Submitted::Done(result) => {
                if let Some(Resume::After(seq)) = result
                    .as_ref()
                    .ok()
                    .and_then(|ids| ids.last())
                    .map(|id| self.shared.bus.resume_point(id.as_str()))
                {
                    let mut newest = self
                        .shared
                        .newest_published
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    *newest = (*newest).max(seq);
                }
                result
            }
            // Without a ticket a bus answers at once; this arm only keeps the match whole.
            Submitted::Pending => Err(PublishError::Unavailable),
        }
    }

    /// Live counters, summed over the event loops.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats {
            events_published: self.shared.bus.published(),
            ..Stats::default()
        };
        for loop_stats in &self.shared.loop_stats {
            stats.connections += loop_stats.connections.load(Ordering::Relaxed);
            stats.subscribers += loop_stats.subscribers.load(Ordering::Relaxed);
            stats.deliveries += loop_stats.deliveries.load(Ordering::Relaxed);
        }
        stats
    }

    /// Each topic's subscriber count and newest id, in the order given (a name given
    /// twice is answered twice), as `GET /topics` reports them: the count is cluster-wide
    /// with the Redis bus (other nodes' counts up to about two seconds old), and the
    /// newest id is the one this node's history holds.
    ///
    /// The names are checked like a subscription's: [`PublishError::InvalidTopic`] for a
    /// bad name, [`PublishError::TooManyTopics`] past `max_topics_per_subscription`.
    /// Asks one event loop for the ids (it answers within a turn) and blocks until it
    /// does: [`PublishError::Busy`] when its query queue is full, and
    /// [`PublishError::ShuttingDown`] when no loop answers.
    pub fn topics(&self, names: &[&str]) -> Result<Vec<TopicPresence>, PublishError> {
        let limits = &self.shared.limits.topics;
        if names.len() > limits.per_subscription {
            return Err(PublishError::TooManyTopics);
        }
        if !names
            .iter()
            .all(|name| topics::is_valid_name(name, limits.name_bytes))
        {
            return Err(PublishError::InvalidTopic);
        }
        let ids = if names.is_empty() {
            Vec::new()
        } else {
            self.newest_ids(names)?
        };
        Ok(names
            .iter()
            .zip(ids)
            .map(|(name, last_id)| TopicPresence {
                subscribers: self.shared.presence.count(name),
                last_id,
            })
            .collect())
    }

    /// Asks a loop (the first that takes the query) for the newest ids of `names`.
    fn newest_ids(&self, names: &[&str]) -> Result<Vec<Option<String>>, PublishError> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut busy = false;
        for (queue, waker) in self.shared.queries.iter().zip(&self.shared.wakers) {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let query = Query::Newest {
                names: names.clone(),
                reply,
            };
            match queue.try_send(query) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(_)) => {
                    busy = true;
                    continue;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => continue,
            }
            // A loop in `poll` wakes; a running one finds the waker set at its next poll.
            if let Err(error) = waker.wake() {
                log::warn!("could not wake an event loop for a query: {error}");
            }
            if let Ok(ids) = answer.recv_timeout(QUERY_WAIT) {
                return Ok(ids);
            }
        }
        Err(if busy {
            PublishError::Busy
        } else {
            PublishError::ShuttingDown
        })
    }

    /// What the history keeps of `topics` from `from`, as an HTTP subscription with
    /// `lastEventId=earliest`, `since=` or a `Last-Event-ID` would be sent before its live
    /// events: each event once, in id order, with its id, event name, data (line breaks
    /// as LF) and `retry:` hint. It includes every event this server's handles published
    /// before the call (with the Redis bus it waits for the stream's reader to bring them
    /// back) and, on the embedded bus, every event published over HTTP before it.
    ///
    /// The answer comes from this node's memory, never from the Redis stream: at most
    /// `max_history_events` per topic (and within the history's byte budgets), nothing
    /// past `history_ttl_ms`, and [`Replay::gap`] set when events after the starting point
    /// may be missing (see there). `topics` may hold wildcards (`prefix*`) under the same
    /// limits as a subscription; names given twice count once.
    ///
    /// Errors: [`PublishError::InvalidTopic`] for a bad name or wildcard (or any
    /// wildcard when `max_patterns_per_subscription` is 0, or more wildcards than it
    /// allows), [`PublishError::TooManyTopics`] past `max_topics_per_subscription`,
    /// [`PublishError::NoTopic`] for none. Blocks until a loop answers (within a turn,
    /// once it has taken the events published before the call):
    /// [`PublishError::Busy`] when its query queue is full, and
    /// [`PublishError::ShuttingDown`] when no loop answers.
    ///
    /// ```
    /// use herald::{Config, Event, ReplayFrom, Server};
    ///
    /// let mut config = Config::default();
    /// config.listen = "127.0.0.1:0".parse().unwrap();
    /// config.threads = 1;
    /// let server = Server::start(config).expect("bind a free port");
    /// let handle = server.handle();
    /// let id = handle
    ///     .publish(&Event::new("prices", "41\r\n42").named("tick"))
    ///     .expect("publish");
    /// let replay = handle
    ///     .replay(&["prices"], ReplayFrom::Earliest)
    ///     .expect("replay");
    /// let event = &replay.events[0];
    /// assert_eq!((&event.id, event.event.as_deref()), (&id, Some("tick")));
    /// assert_eq!(event.data, "41\n42"); // CRLF and CR come back as LF
    /// assert!(!replay.gap);
    /// server.shutdown();
    /// ```
    pub fn replay(&self, topics: &[&str], from: ReplayFrom) -> Result<Replay, PublishError> {
        let limits = &self.shared.limits.topics;
        let mut names: Vec<String> = Vec::with_capacity(topics.len().min(limits.per_subscription));
        for name in topics {
            if !names.iter().any(|known| known == name) {
                if names.len() == limits.per_subscription {
                    return Err(PublishError::TooManyTopics);
                }
                names.push((*name).to_owned());
            }
        }
        if names.is_empty() {
            return Err(PublishError::NoTopic);
        }
        let mut patterns = 0;
        for name in &names {
            match topics::pattern_prefix(name) {
                None if topics::is_valid_name(name, limits.name_bytes) => {}
                Some(prefix)
                    if patterns < limits.patterns_max
                        && prefix.len() >= limits.pattern_prefix_min
                        && (prefix.is_empty()
                            || topics::is_valid_name(prefix, limits.name_bytes)) =>
                {
                    patterns += 1;
                }
                _ => return Err(PublishError::InvalidTopic),
            }
        }
        let start = match from {
            ReplayFrom::Earliest => Start::Earliest,
            ReplayFrom::Since(time) => Start::SinceMs(
                time.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| {
                        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                    }),
            ),
            ReplayFrom::After(id) => Start::After(id),
        };
        let newest = *self
            .shared
            .newest_published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let published = self.shared.bus.published();
        let (reply, answer) = crossbeam_channel::bounded(1);
        let query = Query::Replay(ReplayQuery {
            names,
            start,
            published,
            newest,
            until: Instant::now() + QUERY_WAIT,
            reply,
        });
        self.ask(query, &answer).map(replay::decode)
    }

    /// Puts `query` in the first loop's queue that takes it, wakes that loop and waits for
    /// its answer on `answer`, with a bound.
    fn ask<T>(&self, mut query: Query, answer: &Receiver<T>) -> Result<T, PublishError> {
        let mut busy = false;
        for (queue, waker) in self.shared.queries.iter().zip(&self.shared.wakers) {
            match queue.try_send(query) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    busy = true;
                    query = back;
                    continue;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(back)) => {
                    query = back;
                    continue;
                }
            }
            // A loop in `poll` wakes; a running one finds the waker set at its next poll.
            if let Err(error) = waker.wake() {
                log::warn!("could not wake an event loop for a query: {error}");
            }
            return answer
                .recv_timeout(QUERY_WAIT)
                .map_err(|_| PublishError::ShuttingDown);
        }
        Err(if busy {
            PublishError::Busy
        } else {
            PublishError::ShuttingDown
        })
    }

    /// Starts a graceful shutdown (as [`Server::shutdown`] does) without waiting;
    /// [`Server::wait`] returns once it is complete.
    pub fn shutdown(&self) {
        self.shared.drain();
    }
}
