//! Conversions between etcd's protobuf messages and the store's own types. Enum fields arrive as raw numbers;
//! unknown numbers are refused with `INVALID_ARGUMENT` rather than guessed.

use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbEvent, PbKeyValue, PbPutRequest, PbPutResponse,
    PbRangeRequest, PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use tonic::Status;

use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind,
    KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder,
    SortTarget, TxnRequest, TxnResponse,
};

fn bad_enum(field: &str, value: i32) -> Status {
    Status::invalid_argument(format!("etcdserver: unknown {field} value {value}"))
}

pub(crate) fn range_request(req: PbRangeRequest) -> Result<RangeRequest, Status> {
    let sort_order = match req.sort_order {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        v => return Err(bad_enum("sort_order", v)),
    };
    let sort_target = match req.sort_target {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        v => return Err(bad_enum("sort_target", v)),
    };
    Ok(RangeRequest {
        key: req.key,
        range_end: req.range_end,
        limit: req.limit,
        revision: req.revision,
        sort_order,
        sort_target,
        serializable: req.serializable,
        keys_only: req.keys_only,
        count_only: req.count_only,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    })
}

pub(crate) fn put_request(req: PbPutRequest) -> PutRequest {
    PutRequest {
        key: req.key,
        value: req.value,
        lease: req.lease,
        prev_kv: req.prev_kv,
        ignore_value: req.ignore_value,
        ignore_lease: req.ignore_lease,
    }
}

pub(crate) fn delete_request(req: PbDeleteRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: req.key,
        range_end: req.range_end,
        prev_kv: req.prev_kv,
    }
}

fn compare(cmp: PbCompare) -> Result<Compare, Status> {
    let result = match cmp.result {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        v => return Err(bad_enum("compare result", v)),
    };
    // etcd reads the operand from the union; a missing one compares against the zero value.
    let target = match (cmp.target, cmp.target_union) {
        (0, Some(PbTargetUnion::Version(v))) => CompareTarget::Version(v),
        (0, None) => CompareTarget::Version(0),
        (1, Some(PbTargetUnion::CreateRevision(v))) => CompareTarget::Create(v),
        (1, None) => CompareTarget::Create(0),
        (2, Some(PbTargetUnion::ModRevision(v))) => CompareTarget::Mod(v),
        (2, None) => CompareTarget::Mod(0),
        (3, Some(PbTargetUnion::Value(v))) => CompareTarget::Value(v),
        (3, None) => CompareTarget::Value(Vec::new()),
        (4, Some(PbTargetUnion::Lease(v))) => CompareTarget::Lease(v),
        (4, None) => CompareTarget::Lease(0),
        (t @ 0..=4, Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: compare target {t} does not match its operand"
            )));
        }
        (t, _) => return Err(bad_enum("compare target", t)),
    };
    Ok(Compare {
        result,
        target,
        key: cmp.key,
        range_end: cmp.range_end,
    })
}

fn request_op(op: PbTxnRequestOp) -> Result<RequestOp, Status> {
    match op.request {
        Some(PbTxnOpRequest::RequestRange(r)) => Ok(RequestOp::Range(range_request(r)?)),
        Some(PbTxnOpRequest::RequestPut(p)) => Ok(RequestOp::Put(put_request(p))),
        Some(PbTxnOpRequest::RequestDeleteRange(d)) => Ok(RequestOp::DeleteRange(delete_request(d))),
        Some(PbTxnOpRequest::RequestTxn(t)) => Ok(RequestOp::Txn(txn_request(t)?)),
        None => Err(Status::invalid_argument(
            "etcdserver: a txn operation has no request",
        )),
    }
}

pub(crate) fn txn_request(req: PbTxnRequest) -> Result<TxnRequest, Status> {
    Ok(TxnRequest {
        compare: req.compare.into_iter().map(compare).collect::<Result<_, _>>()?,
        success: req
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: req
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn kv(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn event(event: Event) -> PbEvent {
    PbEvent {
        r#type: match event.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        },
        kv: Some(kv(event.kv)),
        prev_kv: event.prev_kv.map(kv),
    }
}

pub(crate) fn range_response(resp: RangeResponse, header: PbResponseHeader) -> PbRangeResponse {
    PbRangeResponse {
        header: Some(header),
        kvs: resp.kvs.into_iter().map(kv).collect(),
        more: resp.more,
        count: resp.count,
    }
}

pub(crate) fn put_response(resp: PutResponse, header: PbResponseHeader) -> PbPutResponse {
    PbPutResponse {
        header: Some(header),
        prev_kv: resp.prev_kv.map(kv),
    }
}

pub(crate) fn delete_response(resp: DeleteRangeResponse, header: PbResponseHeader) -> PbDeleteResponse {
    PbDeleteResponse {
        header: Some(header),
        deleted: resp.deleted,
        prev_kvs: resp.prev_kvs.into_iter().map(kv).collect(),
    }
}

pub(crate) fn txn_response(resp: TxnResponse, header: &PbResponseHeader) -> PbTxnResponse {
    PbTxnResponse {
        header: Some(*header),
        succeeded: resp.succeeded,
        responses: resp
            .responses
            .into_iter()
            .map(|op| PbResponseOp {
                response: Some(match op {
                    ResponseOp::Range(r) => PbTxnOpResponse::ResponseRange(range_response(r, *header)),
                    ResponseOp::Put(p) => PbTxnOpResponse::ResponsePut(put_response(p, *header)),
                    ResponseOp::DeleteRange(d) => {
                        PbTxnOpResponse::ResponseDeleteRange(delete_response(d, *header))
                    }
                    ResponseOp::Txn(t) => PbTxnOpResponse::ResponseTxn(txn_response(t, header)),
                }),
            })
            .collect(),
    }
}
