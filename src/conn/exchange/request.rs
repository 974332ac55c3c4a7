//! One request of an exchange, from its head: whom it speaks for, its route, a fixed
//! answer, a stream request, or a publish body read to its end and validated.

use std::net::IpAddr;

use crate::auth;
use crate::authorize::{AccessAction, AccessRequest, Decision};
use crate::bus::Resume;
use crate::http::answer::{self, AuthFailure, HttpError};
use crate::http::head::{self, Request};
use crate::http::route::{self, Route};
use crate::publish::{self, BodyFormat, Publish};

use super::super::access::RequestLine;
use super::super::handlers::{self, PublishReply};
use super::super::{Env, Now};
use super::{Exchange, PendingBody, PublishJob, Step, StreamRequest};

impl Exchange {
    /// Whether the client a head names must be counted first: returns the key to count.
    fn client_to_count(&self, env: &Env<'_>, request: &Request<'_>) -> Option<IpAddr> {
        if !self.count_per_request {
            return None;
        }
        let client = handlers::request_client(env, self.peer, request);
        (self.client != Some(client)).then_some(client)
    }

    /// A complete head arrived: answer it, or start its stream or its body.
    pub(super) fn on_head(&mut self, env: &Env<'_>, now: Now, request: Request<'_>) -> Step {
        let cors = answer::cors_headers(env.cors_origins, request.origin);
        let keep_alive = request.keep_alive;
        if std::mem::take(&mut self.client_refused) {
            self.start += request.head_len;
            return self.refuse(HttpError::TooManyFromClient, &cors, false);
        }
        if let Some(client) = self.client_to_count(env, &request) {
            // The head is parsed again once the loop counted its client.
            return Step::Admit(client);
        }
        // The head is consumed whatever the answer; a refusal that keeps the connection
        // open must not parse the same head again.
        self.start += request.head_len;
        if self.access_log {
            let client = handlers::request_addr(env, self.peer, &request);
            self.line = Some(RequestLine::new(
                client,
                request.method,
                request.path,
                now.ms,
            ));
        }
        let has_body = request.content_length > 0 || request.has_transfer_encoding;
        let route = match route::route(
            request.method,
            request.path,
            self.listener,
            env.limits.route,
        ) {
            Ok(route) => route,
            // An unread body leaves the stream untrustworthy: answer and close.
            Err(error) => return self.refuse(error, &cors, keep_alive && !has_body),
        };
        if route != Route::Publish && has_body {
            return self.refuse(HttpError::UnexpectedBody, &cors, false);
        }
        if let Some((status, bytes)) = handlers::fixed_answer(env, route, &request, &cors) {
            return self.answer(status, bytes, keep_alive);
        }
        match route {
            Route::Events if !self.out.is_empty() || !self.queued.is_empty() => {
                // Earlier pipelined answers go out before the stream takes the connection:
                // un-consume the head and parse it again once they are written.
                self.start -= request.head_len;
                self.line = None;
                if self.out.is_empty() {
                    Step::Await
                } else {
                    Step::Write
                }
            }
            Route::Events => match self.stream_request(env, now, &request, cors) {
                Ok(mut stream) => {
                    stream.access = self.line.take().map(|mut line| {
                        line.set_topics(stream.topics.iter().map(String::as_str));
                        Box::new(line)
                    });
                    Step::Subscribe(stream)
                }
                Err((error, cors)) => self.refuse(error, &cors, keep_alive),
            },
            Route::Topics => match handlers::topics_answer(env, &request, &cors, now.unix_ms) {
                Ok(bytes) => self.answer(200, bytes, keep_alive),
                Err(error) => self.refuse(error, &cors, keep_alive),
            },
            _ => self.start_body(env, now, request, cors),
        }
    }

    fn stream_request(
        &self,
        env: &Env<'_>,
        now: Now,
        request: &Request<'_>,
        cors: String,
    ) -> Result<StreamRequest, (HttpError, String)> {
        let subscription = match route::subscription(request.query, env.limits.topics) {
            Ok(subscription) => subscription,
            Err(error) => return Err((error, cors)),
        };
        let token_until_unix_ms =
            match handlers::authorize_subscription(env, request, &subscription, now.unix_ms) {
                Ok(until) => until,
                Err(error) => return Err((error, cors)),
            };
        let addr = handlers::request_addr(env, self.peer, request);
        let ask = env.authorizing.then(|| {
            Box::new(AccessRequest {
                action: AccessAction::Subscribe,
                client: addr,
                topics: subscription.topics.clone(),
                cookie: request.cookie.map(str::to_owned),
                // Bytes a token cannot hold are passed on as the lossy text they make.
                authorization: request
                    .authorization
                    .map(|value| String::from_utf8_lossy(value).into_owned()),
                token: subscription.token.clone(),
                origin: request.origin.map(str::to_owned),
                headers: head::header_pairs(request.raw),
            })
        });
        // An empty id is no id (EventSource never sends one).
        let last_event_id = request
            .last_event_id
            .map(str::to_owned)
            .or(subscription.last_event_id)
            .filter(|id| !id.is_empty());
        Ok(StreamRequest {
            topics: subscription.topics,
            // A Last-Event-ID wins over `since`: it is where the client got to.
            resume: match last_event_id {
                None => subscription.since_ms.map(Resume::Since),
                Some(_) => None,
            },
            last_event_id,
            cors,
            token_until_unix_ms,
            client: handlers::request_client(env, self.peer, request),
            access: None,
            addr,
            ask,
        })
    }

    fn start_body(&mut self, env: &Env<'_>, now: Now, request: Request<'_>, cors: String) -> Step {
        let keep_alive = request.keep_alive;
        if request.has_transfer_encoding || !request.has_content_length {
            return self.refuse(HttpError::LengthRequired, &cors, false);
        }
        if request.content_length > env.limits.publish_body_bytes_max {
            return self.refuse(HttpError::BodyTooLarge, &cors, false);
        }
        let body_unread = request.content_length > 0;
        let grant = match handlers::authorize_publisher(env, &request, now.unix_ms) {
            Ok(grant) => grant,
            Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
        };
        let format = match publish::body_format(request.content_type) {
            Ok(format) => format,
            Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
        };
        let app_grant = if env.authorizing_publish {
            match self.decided.take() {
                None => return self.ask_about_publish(env, &request),
                Some(decided) => match publish_grant(decided) {
                    Ok(patterns) => patterns,
                    Err(error) => return self.refuse(error, &cors, keep_alive && !body_unread),
                },
            }
        } else {
            None
        };
        let content_length = request.content_length;
        self.body = Some(PendingBody {
            bytes: vec![0; content_length],
            filled: 0,
            format,
            query: request.query.to_owned(),
            reply: PublishReply {
                json: format == BodyFormat::Json,
                batch: format == BodyFormat::Ndjson,
                keep_alive,
                cors,
                line: self.line.take(),
            },
            grant,
            app_grant,
        });
        let buffered = self.filled - self.start;
        if request.expect_continue && buffered < content_length {
            self.emit(answer::CONTINUE);
            return Step::Write;
        }
        Step::Read // The caller copies what is buffered into the body first.
    }

    /// A publish head that needs the application's decision: it is put back, to be parsed
    /// again once the decision is in ([`Exchange::on_decided`]); earlier pipelined answers
    /// go out first, as before a stream. The question names the query's topics (a raw-body
    /// publish's); the body's topics are checked against the grant once it is read.
    fn ask_about_publish(&mut self, env: &Env<'_>, request: &Request<'_>) -> Step {
        self.start -= request.head_len;
        self.line = None;
        if !self.out.is_empty() {
            return Step::Write;
        }
        if !self.queued.is_empty() {
            return Step::Await;
        }
        Step::Authorize(Box::new(AccessRequest {
            action: AccessAction::Publish,
            client: handlers::request_addr(env, self.peer, request),
            topics: route::topic_list(request.query, env.limits.topics).unwrap_or_default(),
            cookie: request.cookie.map(str::to_owned),
            authorization: request
                .authorization
                .map(|value| String::from_utf8_lossy(value).into_owned()),
            token: None,
            origin: request.origin.map(str::to_owned),
            headers: head::header_pairs(request.raw),
        }))
    }

    /// Copies buffered body bytes; a complete body becomes a publish for the loop.
    pub(super) fn continue_body(&mut self, env: &Env<'_>) -> Step {
        let Some(body) = &mut self.body else {
            return Step::Read;
        };
        let take = (self.filled - self.start).min(body.bytes.len() - body.filled);
        body.bytes[body.filled..body.filled + take]
            .copy_from_slice(&self.inbuf[self.start..self.start + take]);
        body.filled += take;
        self.start += take;
        if body.filled < body.bytes.len() {
            return Step::Read;
        }
        let Some(body) = self.body.take() else {
            return Step::Read;
        };
        let mut reply = body.reply;
        // A refusal below answers this request.
        self.line = reply.line.take();
        let events = match publish::parse_publish(
            body.format,
            &body.query,
            &body.bytes,
            env.limits.batch_events_max,
        ) {
            Ok(Publish::One(event)) => vec![(None, event)],
            Ok(Publish::Batch(batch)) => {
                reply.batch = true;
                batch
                    .into_iter()
                    .map(|(place, event)| (Some(place), event))
                    .collect()
            }
            Err(error) => return self.refuse(error, &reply.cors, reply.keep_alive),
        };
        let mut job = PublishJob {
            events: Vec::with_capacity(events.len()),
        };
        for (place, event) in events {
            let topics = match publish::prepare(&event, &env.limits.publish) {
                Ok(outgoing) => outgoing.topics,
                Err(error) => {
                    let error = HttpError::Publish(error);
                    // One bad event refuses the whole batch, naming where it sits.
                    let error = place.map_or(error, |place| error.in_batch(place));
                    return self.refuse(error, &reply.cors, reply.keep_alive);
                }
            };
            if let Some(patterns) = &body.grant {
                if !auth::allows_all(patterns, topics.iter().map(|t| &**t)) {
                    return self.refuse(HttpError::Forbidden, &reply.cors, reply.keep_alive);
                }
            }
            if let Some(patterns) = &body.app_grant {
                if !auth::allows_all(patterns, topics.iter().map(|t| &**t)) {
                    return self.refuse(HttpError::AppForbidden, &reply.cors, reply.keep_alive);
                }
            }
            job.events.push((event, topics));
        }
        reply.line = self.line.take().map(|mut line| {
            // A batch names each of its topics once, in first-seen order.
            let mut seen = std::collections::HashSet::new();
            let topics = job.events.iter().flat_map(|(_, topics)| topics.iter());
            line.set_topics(
                topics
                    .map(|topic| &**topic)
                    .filter(|topic| seen.insert(*topic)),
            );
            line
        });
        self.submitting = Some(reply);
        Step::Publish(Box::new(job))
    }
}

/// What the application's decision on a publish allows: the topic patterns its body must
/// stay within (`None`: any), or the refusal.
fn publish_grant(decided: Result<Decision, AuthFailure>) -> Result<Option<Vec<String>>, HttpError> {
    match decided {
        Ok(Decision::Allow(grant)) => Ok(grant.topics),
        Ok(Decision::Unauthorized) => Err(HttpError::AppUnauthorized),
        Ok(Decision::Forbidden) => Err(HttpError::AppForbidden),
        Ok(Decision::Unavailable) => Err(HttpError::AuthUnavailable(AuthFailure::Failed)),
        Err(failure) => Err(HttpError::AuthUnavailable(failure)),
    }
}
