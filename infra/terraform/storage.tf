# The bucket, its notifications and both tables (the same keys and indexes `fanout bootstrap`
# creates: fanout/bootstrap.py).

resource "aws_s3_bucket" "data" {
  #checkov:skip=CKV_AWS_145:S3 encrypts every object (SSE-S3) by default; SSE-KMS as bucket default needs aws_s3_bucket_server_side_encryption_configuration, which provider 3.39 lacks (docs/infra.md shows the resource to add on 4.x+)
  #checkov:skip=CKV_AWS_21:SageMaker rewrites checkpoints continuously under jobs/; versioning would keep every old checkpoint (storage grows without bound)
  #checkov:skip=CKV2_AWS_61:a lifecycle rule needs aws_s3_bucket_lifecycle_configuration (provider 4.x+) or the inline block 4.x deprecated; docs/infra.md shows one to add
  #checkov:skip=CKV_AWS_144:cross-region replication doubles storage; models can be retrained from requests/, checkpoints are transient
  #checkov:skip=CKV_AWS_18:server access logs need a second bucket; use CloudTrail S3 data events where an audit trail is required
  bucket        = local.bucket
  force_destroy = var.force_destroy_bucket
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# No ownership controls resource: new buckets have ACLs disabled (BucketOwnerEnforced) by
# default since 2023, and provider 3.39 does not know that value.

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  count      = var.require_tls ? 1 : 0
  bucket     = aws_s3_bucket.data.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.data]
}

# The filters are the literal parts of fanout.events.REQUEST_KEY, ARTIFACT_KEY and PREVIEW_KEY;
# the handlers ignore any other key that passes them (the stack check tests each against sample
# keys). Previews: one grid per preview step of each task, as SageMaker syncs the checkpoints.
resource "aws_s3_bucket_notification" "data" {
  bucket = aws_s3_bucket.data.id
  lambda_function {
    id                  = "requests"
    lambda_function_arn = aws_lambda_function.handler["on_upload"].arn
    events              = ["s3:ObjectCreated:*"]
    filter_prefix       = "requests/"
    filter_suffix       = "/request.json"
  }
  lambda_function {
    id                  = "artifacts"
    lambda_function_arn = aws_lambda_function.handler["on_task_artifact"].arn
    events              = ["s3:ObjectCreated:*"]
    filter_prefix       = "models/"
    filter_suffix       = "/manifest.json"
  }
  lambda_function {
    id                  = "previews"
    lambda_function_arn = aws_lambda_function.handler["on_preview"].arn
    events              = ["s3:ObjectCreated:*"]
    filter_prefix       = "jobs/"
    filter_suffix       = "/grid.png"
  }
  depends_on = [aws_lambda_permission.s3]
}

resource "aws_dynamodb_table" "requests" {
  #checkov:skip=CKV_AWS_119:encrypted with DynamoDB's AWS owned key unless kms_key_arn is set (then that customer managed key)
  name         = local.requests_table
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "request_key"

  dynamic "attribute" {
    for_each = ["request_key", "status", "updated_at", "job_name", "outbox_at"]
    content {
      name = attribute.value
      type = "S"
    }
  }
  global_secondary_index {
    name            = local.status_index
    hash_key        = "status"
    range_key       = "updated_at"
    projection_type = "ALL"
  }
  global_secondary_index {
    name            = local.job_index
    hash_key        = "job_name"
    projection_type = "ALL"
  }
  # sparse: only requests whose lifecycle events wait to be published (the launcher's sweep)
  global_secondary_index {
    name            = local.outbox_index
    hash_key        = "outbox_at"
    projection_type = "KEYS_ONLY"
  }
  point_in_time_recovery {
    enabled = true
  }
  # without a key: DynamoDB's default AWS owned key (free); with one: that customer managed key
  server_side_encryption {
    enabled     = var.kms_key_arn != ""
    kms_key_arn = var.kms_key_arn != "" ? var.kms_key_arn : null
  }
  tags = var.tags
}

resource "aws_dynamodb_table" "models" {
  #checkov:skip=CKV_AWS_119:encrypted with DynamoDB's AWS owned key unless kms_key_arn is set (then that customer managed key)
  name         = local.models_table
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "user_id"
  range_key    = "model_id"

  dynamic "attribute" {
    for_each = ["user_id", "model_id"]
    content {
      name = attribute.value
      type = "S"
    }
  }
  point_in_time_recovery {
    enabled = true
  }
  # without a key: DynamoDB's default AWS owned key (free); with one: that customer managed key
  server_side_encryption {
    enabled     = var.kms_key_arn != ""
    kms_key_arn = var.kms_key_arn != "" ? var.kms_key_arn : null
  }
  tags = var.tags
}
