//! This node's named volumes, for `apiary volume ls|inspect|rm` (asked by
//! a manager): Docker Engine volumes of docker tasks and directories of
//! exec tasks.

use std::path::PathBuf;

use control::api::volumes::{NodeVolume, NodeVolumes};

use crate::driver::docker::DockerDriver;
use crate::driver::exec::ExecDriver;

pub struct LocalVolumes {
    pub data_dir: PathBuf,
    pub cgroup_parent: String,
    pub docker_socket: String,
}

impl LocalVolumes {
    fn exec(&self) -> ExecDriver {
        ExecDriver::new(&self.data_dir, PathBuf::from("apiary"), &self.cgroup_parent)
    }

    /// The engine, if this node has one.
    fn docker(&self) -> Option<DockerDriver> {
        let scope = crate::driver::docker::scope(&self.cgroup_parent);
        DockerDriver::connect(&self.docker_socket, &scope).ok()
    }
}

impl NodeVolumes for LocalVolumes {
    fn list(&self) -> Result<Vec<NodeVolume>, String> {
        let mut out = self.exec().volumes();
        if let Some(d) = self.docker() {
            out.extend(d.volumes().map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn remove(&self, name: &str) -> Result<bool, String> {
        let mut found = self.exec().remove_volume(name).map_err(|e| e.to_string())?;
        if let Some(d) = self.docker() {
            found |= d.remove_volume(name).map_err(|e| e.to_string())?;
        }
        Ok(found)
    }
}
