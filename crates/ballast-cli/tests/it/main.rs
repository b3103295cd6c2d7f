//! ballast's integration tests: one binary, every test against its own private
//! `redis-server` (see `harness`).

mod harness;

mod cancel_task;
mod chaos;
mod claim_tasks;
mod cli;
mod finish_task;
mod finish_tasks;
mod heartbeat_worker;
mod jobs;
mod leave_worker;
mod placement;
mod races;
mod recover_workers;
mod register_worker;
mod resync_worker;
mod submit_job;
mod submit_task;
mod submit_tasks;
mod validation;
mod worker;
