//! Batch mode on Amazon Bedrock (`--endpoint bedrock --mode batch`): what
//! differs from the other providers' batches, for the run to plug in.
//!
//! - Requests are laid out as Bedrock batch records want them: the model's
//!   InvokeModel body, which for Anthropic Claude (the only family aiq runs
//!   in Bedrock batches) is Anthropic's Messages body, not the Converse
//!   body online mode sends; replies are read the same way ([`view`]).
//! - The Batch API is the control plane's batch inference jobs, signed with
//!   the job's AWS credentials, its files in the S3 prefix of
//!   `--batch-staging` ([`api`]).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::job::location::{Location, Role};
use crate::job::plan::Plan;
use crate::pipeline::render::{BodyBuilder, BodySpec, Templates};
use crate::pipeline::store::Remote;
use crate::provider::auth::Credentials;
use crate::provider::aws::Service;
use crate::provider::bedrock_batch::Staging;
use crate::provider::dialect::Dialect;
use crate::provider::endpoint::Endpoint;
use crate::provider::reply::Shape;

/// How batch mode lays out requests and reads replies: as online mode
/// does, but on Bedrock in Anthropic's Messages shape.
pub fn view(
    plan: &Plan,
    templates: &Templates,
    builder: &Arc<BodyBuilder>,
    shape: &Shape,
) -> (Arc<BodyBuilder>, Shape) {
    if plan.dialect() != Dialect::Bedrock {
        return (builder.clone(), shape.clone());
    }
    let spec = BodySpec {
        dialect: Dialect::Anthropic,
        model: None,
        ..plan.body_spec()
    };
    let shape = Shape {
        dialect: Dialect::Anthropic,
        ..shape.clone()
    };
    (Arc::new(BodyBuilder::new(spec, templates)), shape)
}

/// The fewest requests one batch takes on the plan's endpoint: a file
/// with fewer goes online (Bedrock's minimum records per job).
pub fn min_requests(plan: &Plan) -> usize {
    match plan.dialect() {
        Dialect::Bedrock => plan.batch.min_records,
        _ => 1,
    }
}

/// The control plane's base URL and the staging prefix, for a Bedrock
/// endpoint; None for the others.
pub fn api(plan: &Plan, endpoint: &Endpoint) -> Result<Option<(String, Staging)>> {
    let Credentials::Aws(aws) = &endpoint.credentials else {
        return Ok(None);
    };
    let (Some(url), Some(role_arn)) = (&plan.batch.staging, &plan.batch.role_arn) else {
        // The plan requires both for Bedrock: kept so no job runs without.
        return Err(Error::Config(
            "--endpoint bedrock --mode batch needs --batch-staging and --bedrock-role-arn".into(),
        ));
    };
    // The plan checked it is an s3:// prefix.
    let Location::Store(url) = Location::parse(url, Role::Output)? else {
        return Err(Error::output(url, "--batch-staging must be an s3:// URL"));
    };
    let remote = Remote::open_s3_as(&url, Role::Output, aws.credential_provider(), aws.region())?;
    let staging = Staging {
        store: remote.store,
        bucket_url: remote.root.as_str().trim_end_matches('/').to_string(),
        prefix: remote.key.as_ref().trim_matches('/').to_string(),
        role_arn: role_arn.clone(),
        min_records: plan.batch.min_records,
    };
    Ok(Some((aws.endpoint(Service::Control), staging)))
}
