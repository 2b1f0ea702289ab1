//! Status: RuntimeReady always (we answer), NetworkReady once a CNI conflist exists.

use std::time::Duration;

use skiff_proto::cri;

use crate::cni::Cni;
use crate::error::Result;
use crate::server::State;

pub(crate) fn status(st: &State, _req: cri::StatusRequest) -> Result<cri::StatusResponse> {
    let cni = Cni {
        conf_dir: &st.cfg.cni_conf_dir,
        bin_dir: &st.cfg.cni_bin_dir,
        timeout: Duration::from_secs(st.cfg.cni_timeout_secs),
    };
    let network = match cni.load_conflist() {
        Ok(Some(_)) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: true,
            ..Default::default()
        },
        Ok(None) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: crate::cni::not_configured(&st.cfg.cni_conf_dir),
        },
        Err(e) => cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: e.to_string(),
        },
    };
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![
                cri::RuntimeCondition {
                    r#type: "RuntimeReady".into(),
                    status: true,
                    ..Default::default()
                },
                network,
            ],
        }),
        runtime_handlers: st
            .cfg
            .handler_names()
            .into_iter()
            .map(|name| cri::RuntimeHandler {
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: st.cfg.supports_recursive_ro(&name),
                    user_namespaces: st.cfg.supports_user_namespaces(&name),
                }),
                name,
            })
            .collect(),
        // SupplementalGroupsPolicy (Strict and Merge) and ContainerStatus `user`.
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
        ..Default::default()
    })
}
