//! The admin gRPC service (`swarmca.admin.v1.Admin`) over [`Control`]. The binary serves it on
//! the owner-only control socket; it performs no authorization of its own.

use std::time::Duration;

use swarmca_core::role::Role;
use swarmca_proto::admin::{self, admin_server::Admin};
use tonic::{Request, Response, Status};

use crate::control::Control;

fn role_of(r: i32) -> Result<Role, Status> {
    match admin::Role::try_from(r) {
        Ok(admin::Role::Worker) => Ok(Role::Worker),
        Ok(admin::Role::Manager) => Ok(Role::Manager),
        Err(_) => Err(Status::invalid_argument(format!("unknown role {r}"))),
    }
}

#[tonic::async_trait]
impl Admin for Control {
    async fn join_token(
        &self,
        req: Request<admin::JoinTokenRequest>,
    ) -> Result<Response<admin::JoinTokenResponse>, Status> {
        let r = req.into_inner();
        let token = Control::join_token(self, role_of(r.role)?, r.rotate).await?;
        Ok(Response::new(admin::JoinTokenResponse { token }))
    }

    async fn list_nodes(
        &self,
        _req: Request<admin::ListNodesRequest>,
    ) -> Result<Response<admin::ListNodesResponse>, Status> {
        Ok(Response::new(admin::ListNodesResponse { nodes: Control::list_nodes(self).await? }))
    }

    async fn inspect_node(
        &self,
        req: Request<admin::NodeRequest>,
    ) -> Result<Response<admin::NodeInfo>, Status> {
        Ok(Response::new(Control::inspect_node(self, &req.into_inner().node_id).await?))
    }

    async fn remove_node(
        &self,
        req: Request<admin::RemoveNodeRequest>,
    ) -> Result<Response<admin::NodeInfo>, Status> {
        let r = req.into_inner();
        Ok(Response::new(Control::remove_node(self, &r.node_id, r.force).await?))
    }

    async fn promote_node(
        &self,
        req: Request<admin::NodeRequest>,
    ) -> Result<Response<admin::NodeInfo>, Status> {
        Ok(Response::new(self.set_role(&req.into_inner().node_id, Role::Manager).await?))
    }

    async fn demote_node(
        &self,
        req: Request<admin::NodeRequest>,
    ) -> Result<Response<admin::NodeInfo>, Status> {
        Ok(Response::new(self.set_role(&req.into_inner().node_id, Role::Worker).await?))
    }

    async fn accept_node(
        &self,
        req: Request<admin::NodeRequest>,
    ) -> Result<Response<admin::NodeInfo>, Status> {
        Ok(Response::new(Control::accept_node(self, &req.into_inner().node_id).await?))
    }

    async fn get_cluster_info(
        &self,
        _req: Request<admin::ClusterInfoRequest>,
    ) -> Result<Response<admin::ClusterInfo>, Status> {
        Ok(Response::new(self.cluster_info().await?))
    }

    async fn update_cluster(
        &self,
        req: Request<admin::UpdateClusterRequest>,
    ) -> Result<Response<admin::ClusterInfo>, Status> {
        let r = req.into_inner();
        let expiry = (r.cert_expiry_secs != 0).then(|| Duration::from_secs(r.cert_expiry_secs));
        let external = r.set_external_cas.then_some(r.external_cas);
        Ok(Response::new(self.update_cluster_settings(expiry, r.autolock, external).await?))
    }

    async fn unlock_key(
        &self,
        req: Request<admin::UnlockKeyRequest>,
    ) -> Result<Response<admin::UnlockKeyResponse>, Status> {
        Ok(Response::new(Control::unlock_key(self, req.into_inner().rotate).await?))
    }

    async fn rotate_root(
        &self,
        req: Request<admin::RotateRootRequest>,
    ) -> Result<Response<admin::RotationStatus>, Status> {
        Ok(Response::new(Control::rotate_root(self, req.into_inner()).await?))
    }

    async fn get_rotation_status(
        &self,
        _req: Request<admin::RotationStatusRequest>,
    ) -> Result<Response<admin::RotationStatus>, Status> {
        Ok(Response::new(self.rotation_status().await?))
    }

    async fn unlock(
        &self,
        _req: Request<admin::UnlockRequest>,
    ) -> Result<Response<admin::UnlockResponse>, Status> {
        Ok(Response::new(admin::UnlockResponse { message: "this manager is not locked".into() }))
    }
}
