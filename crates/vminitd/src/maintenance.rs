//! A maintenance boot (`MountRoot`): the root filesystem of a container
//! that is not running, mounted with nothing in it and no process started,
//! so the host can copy files in and out (`vessel cp`, `vessel export`) on
//! connections of their own. The connection that asked stays open until
//! the host says `Shutdown` or goes away; then the VM powers off (in
//! `main`: every process ended, the root unmounted, the disks synced).

use crate::conn::{decode_host, Conn};
use crate::session::{common_request, Outcome};
use crate::{log_line, mounts};
use agent_protocol::{FrameKind, GuestMessage, HostMessage};

/// Serve `MountRoot`. `Err` (the root cannot be mounted, a protocol error)
/// powers the VM off, as on a container's main connection.
pub fn serve(conn: &mut Conn, root_device: &str, root_fstype: &str) -> Result<Outcome, String> {
    mounts::mount_root(root_device, root_fstype)?;
    log_line("maintenance boot: the root filesystem is mounted, no process started");
    conn.send(&GuestMessage::RootMounted)?;
    loop {
        let Some(frame) = conn.recv(None)? else {
            return Ok(Outcome::PowerOff);
        };
        if frame.kind != FrameKind::Control {
            return Err(format!(
                "protocol error: a {:?} frame during a maintenance boot",
                frame.kind
            ));
        }
        match decode_host(&frame)? {
            HostMessage::Shutdown => return Ok(Outcome::PowerOff),
            m => {
                if !common_request(conn, &m)? {
                    return Err(format!("protocol error: {m:?} during a maintenance boot"));
                }
            }
        }
    }
}
