# The serverless path of docs/fanout.md: S3 upload -> requests table -> launch_pending ->
# SageMaker -> on_job_state_change / on_task_artifact -> models table.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  # no attribute of aws_region is undeprecated from 3.39 to 6.x (`region` arrived in 5.100 and
  # 6.x deprecates `name` and `id`): `id` works everywhere, 6.x warns about it
  region = data.aws_region.current.id
  bucket = var.bucket_name != "" ? var.bucket_name : "${var.name_prefix}-${local.account}-${local.region}"
  kms    = var.kms_key_arn != "" ? [var.kms_key_arn] : []
  vpc    = length(var.subnet_ids) > 0

  image_uri = var.image_uri != "" ? var.image_uri : "${aws_ecr_repository.trainer[0].repository_url}:${var.image_tag}"
  # ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG -> the repository the jobs may pull from
  image_parts    = regex("^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com(?:\\.cn)?/([^:@]+)", local.image_uri)
  image_repo_arn = "arn:${local.partition}:ecr:${local.image_parts[1]}:${local.image_parts[0]}:repository/${local.image_parts[2]}"

  model_parts  = regex("^s3://([^/]+)/(.*)$", var.base_model_uri)
  model_bucket = local.model_parts[0]
  model_prefix = trimsuffix(local.model_parts[1], "/")

  # Names the handlers read (fanout/store.py, fanout/bootstrap.py)
  requests_table = "${var.name_prefix}-requests"
  models_table   = "${var.name_prefix}-models"
  status_index   = "by-status"
  job_index      = "by-job"
  outbox_index   = "by-outbox"
  job_prefix     = var.name_prefix

  handlers = {
    on_upload           = "fanout.handlers.on_upload"
    launch_pending      = "fanout.handlers.launch_pending"
    on_job_state_change = "fanout.handlers.on_job_state_change"
    on_task_artifact    = "fanout.handlers.on_task_artifact"
    on_preview          = "fanout.handlers.on_preview"
  }
  function_names = { for k, _ in local.handlers : k => "${var.name_prefix}-${replace(k, "_", "-")}" }
  timeouts = {
    on_upload           = 60
    launch_pending      = var.launch_timeout_s
    on_job_state_change = 300
    on_task_artifact    = 60
    on_preview          = 60
  }

  # Exactly fanout.settings.Settings names (the stack check parses them with Settings.from_env);
  # empty values are left out, as from_env treats them as unset.
  settings = merge({
    FANOUT_BUCKET            = local.bucket
    FANOUT_REQUESTS_TABLE    = local.requests_table
    FANOUT_MODELS_TABLE      = local.models_table
    FANOUT_IMAGE_URI         = local.image_uri
    FANOUT_ROLE_ARN          = aws_iam_role.sagemaker.arn
    FANOUT_MODEL_URI         = var.base_model_uri
    FANOUT_INSTANCE_TYPE     = var.instance_type
    FANOUT_MAX_INSTANCES     = tostring(var.max_instances)
    FANOUT_MAX_TASKS_PER_JOB = tostring(var.max_tasks_per_job)
    FANOUT_MAX_JOBS_PER_RUN  = tostring(var.max_jobs_per_run)
    FANOUT_MAX_RETRIES       = tostring(var.max_retries)
    FANOUT_CLAIM_TIMEOUT_S   = tostring(var.launch_timeout_s + 300)
    FANOUT_VOLUME_SIZE_GB    = tostring(var.volume_size_gb)
    FANOUT_MAX_RUNTIME_S     = tostring(var.max_runtime_s)
    FANOUT_SPOT              = tostring(var.spot)
    FANOUT_JOB_PREFIX        = local.job_prefix
    FANOUT_HYPERPARAMETERS   = jsonencode(var.hyperparameters)
    FANOUT_KMS_KEY           = var.kms_key_arn
    FANOUT_SUBNETS           = join(",", var.subnet_ids)
    FANOUT_SECURITY_GROUPS   = join(",", var.security_group_ids)
    FANOUT_REGION            = local.region
  }, local.lifecycle_settings)
  environment = { for k, v in local.settings : k => v if v != "" }
}

resource "aws_ecr_repository" "trainer" {
  count                = var.create_ecr_repository ? 1 : 0
  name                 = "${var.name_prefix}-trainer"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = var.kms_key_arn != "" ? "KMS" : "AES256"
    kms_key         = var.kms_key_arn != "" ? var.kms_key_arn : null
  }
  tags = var.tags
}
