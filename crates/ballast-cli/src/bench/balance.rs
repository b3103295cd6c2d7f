//! The balance suite (scheduling quality): placeholder until the policies land.

use serde_json::{json, Value};

use super::BenchArgs;
use crate::CliError;

pub async fn run(_url: Option<&str>, _a: &BenchArgs) -> Result<Value, CliError> {
    Ok(json!({ "columns": [], "rows": [] }))
}
