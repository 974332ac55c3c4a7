//! herald as the notification tier of a host program: the program runs its own work loop
//! (here, a queue of jobs processed step by step) and publishes each job's progress to the
//! job's topic, while herald serves the browsers that watch them.
//!
//! Run with `cargo run --example job_progress`, then watch a job:
//! `curl -N 'localhost:8080/events?topic=jobs/1'`. Environment: `HERALD_LISTEN` (default
//! 127.0.0.1:8080), `HERALD_EXAMPLE_JOBS` (default 5), `HERALD_EXAMPLE_STEP_MS` (default 500).

use std::collections::VecDeque;
use std::time::Duration;

use herald::{Config, Event, Server};

/// One unit of the host program's own work.
struct Job {
    id: u32,
    steps: u32,
    done: u32,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{name}={text:?} is invalid")),
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::default();
    config.listen = env_or("HERALD_LISTEN", config.listen)?;
    let jobs: u32 = env_or("HERALD_EXAMPLE_JOBS", 5)?;
    let step = Duration::from_millis(env_or("HERALD_EXAMPLE_STEP_MS", 500)?);

    let server = Server::start(config)?;
    let handle = server.handle();
    eprintln!("serving on http://{}", server.local_addr());

    // The host's own loop: round-robin over its jobs, one step at a time.
    let mut queue: VecDeque<Job> = (1..=jobs)
        .map(|id| Job {
            id,
            steps: 3 + id % 3,
            done: 0,
        })
        .collect();
    let mut published = 0;
    while let Some(mut job) = queue.pop_front() {
        std::thread::sleep(step); // Stands in for real work.
        job.done += 1;
        let topic = format!("jobs/{}", job.id);
        let percent = job.done * 100 / job.steps;
        let event = if job.done == job.steps {
            Event::new(topic, format!(r#"{{"job":{},"status":"done"}}"#, job.id)).named("done")
        } else {
            Event::new(
                topic,
                format!(r#"{{"job":{},"percent":{percent}}}"#, job.id),
            )
            .named("progress")
        };
        handle.publish(&event)?;
        published += 1;
        if job.done < job.steps {
            queue.push_back(job);
        }
    }
    eprintln!("all {jobs} jobs done; {published} events published");
    server.shutdown();
    Ok(())
}
