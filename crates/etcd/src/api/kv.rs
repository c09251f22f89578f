//! etcd `KV`: Range, Put, DeleteRange, Txn, Compact.

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService, PbPutRequest,
    PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse, PbTxnRequest, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::{EtcdServer, convert};
use crate::mvcc::{MvccError, MvccStore};
use crate::store::{StoreCommand, StoreOutcome, StoreResult};

fn unexpected(outcome: &StoreOutcome) -> Status {
    Status::internal(format!("etcdserver: unexpected outcome {outcome:?}"))
}

impl EtcdServer {
    async fn write(&self, command: StoreCommand) -> Result<(StoreOutcome, i64), Status> {
        let StoreResult { revision, outcome } = self.store.propose(command).await?;
        Ok((outcome.map_err(Status::from)?, revision))
    }
}

#[tonic::async_trait]
impl PbKvService for EtcdServer {
    async fn range(&self, request: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        let req = convert::range_request(request.into_inner())?;
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey.into());
        }
        if !req.serializable {
            self.store.read_barrier().await?;
        }
        let (resp, revision) = self
            .store
            .read(|app| (app.store().range(&req), app.store().revision()));
        Ok(Response::new(convert::range_response(
            resp?,
            self.header(revision),
        )))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented(
            "RangeStream is not supported; use Range with limit",
        ))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let req = request.into_inner();
        self.check_size(&req)?;
        let req = convert::put_request(req);
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey.into());
        }
        match self.write(StoreCommand::Put(req)).await? {
            (StoreOutcome::Put(resp), revision) => {
                Ok(Response::new(convert::put_response(resp, self.header(revision))))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let req = request.into_inner();
        self.check_size(&req)?;
        let req = convert::delete_request(req);
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey.into());
        }
        match self.write(StoreCommand::DeleteRange(req)).await? {
            (StoreOutcome::DeleteRange(resp), revision) => Ok(Response::new(convert::delete_response(
                resp,
                self.header(revision),
            ))),
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let req = request.into_inner();
        self.check_size(&req)?;
        let req = convert::txn_request(req)?;
        // A transaction that only reads need not go through the log: evaluate it locally after a read barrier.
        if MvccStore::txn_is_read_only(&req) {
            self.store.read_barrier().await?;
            let (resp, revision) = self
                .store
                .read(|app| (app.store().read_txn(&req), app.store().revision()));
            return Ok(Response::new(convert::txn_response(
                resp?,
                &self.header(revision),
            )));
        }
        match self.write(StoreCommand::Txn(req)).await? {
            (StoreOutcome::Txn(resp), revision) => {
                Ok(Response::new(convert::txn_response(resp, &self.header(revision))))
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let req = request.into_inner();
        match self.write(StoreCommand::Compact(req.revision)).await? {
            (StoreOutcome::Compacted, revision) => Ok(Response::new(PbCompactionResponse {
                header: Some(self.header(revision)),
            })),
            (other, _) => Err(unexpected(&other)),
        }
    }
}
