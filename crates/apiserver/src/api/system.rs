//! `/v1/system/...`.

use super::call::Call;
use crate::error::ApiResult;
use crate::server::Server;
use std::sync::Arc;

pub fn info(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    let info = s.system_info();
    c.respond_json(200, &info)
}

pub fn shutdown(s: &Arc<Server>, c: &mut Call) -> ApiResult<()> {
    // Shut down even if the client has hung up already.
    c.respond_json(200, &serde_json::json!({"ok": true}))?;
    s.shutdown();
    Ok(())
}
