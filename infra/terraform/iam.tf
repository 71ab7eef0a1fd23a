# Least privilege: each function gets the actions and resources its code path uses
# (fanout/service.py, store.py, launcher.py, status.py), and the SageMaker role only what a job
# reads and writes. Statements every function shares come first.

locals {
  bucket_arn   = aws_s3_bucket.data.arn
  requests_arn = aws_dynamodb_table.requests.arn
  models_arn   = aws_dynamodb_table.models.arn
  job_arns     = "arn:${local.partition}:sagemaker:${local.region}:${local.account}:training-job/${local.job_prefix}-*"

  # both completion paths register the model
  register_model = { sid = "RegisterModel", actions = ["dynamodb:PutItem"], resources = [local.models_arn], conditions = [] }

  # Each function's own statements, after the ones every function gets (data.aws_iam_policy_document.handler).
  handler_statements = {
    # read request.json, put the new request
    on_upload = [
      { sid = "ReadRequests", actions = ["s3:GetObject"], resources = ["${local.bucket_arn}/requests/*"], conditions = [] },
      { sid = "NewRequest", actions = ["dynamodb:PutItem"], resources = [local.requests_arn], conditions = [] },
    ]
    # claim through the status index, list images, write job inputs, read the base's family, create jobs
    launch_pending = [
      {
        sid        = "Claim"
        actions    = ["dynamodb:Query", "dynamodb:UpdateItem"]
        resources  = [local.requests_arn, "${local.requests_arn}/index/${local.status_index}"]
        conditions = []
      },
      {
        sid        = "ListImages"
        actions    = ["s3:ListBucket"]
        resources  = [local.bucket_arn]
        conditions = [{ test = "StringLike", variable = "s3:prefix", values = ["requests/*"] }]
      },
      { sid = "JobInputs", actions = ["s3:PutObject"], resources = ["${local.bucket_arn}/jobs/*"], conditions = [] },
      # the base's model_index.json names its family: what a task costs and whether it fits the GPU
      {
        sid        = "ReadModelIndex"
        actions    = ["s3:GetObject"]
        resources  = ["arn:${local.partition}:s3:::${local.model_bucket}/${local.model_prefix}/model_index.json"]
        conditions = []
      },
      {
        sid        = "CreateJobs"
        actions    = ["sagemaker:CreateTrainingJob"]
        resources  = [local.job_arns]
        conditions = [{ test = "ForAllValues:StringEquals", variable = "sagemaker:InstanceTypes", values = [var.instance_type] }]
      },
      {
        sid        = "OwnJobs"
        actions    = ["sagemaker:DescribeTrainingJob", "sagemaker:ListTags", "sagemaker:AddTags"]
        resources  = [local.job_arns]
        conditions = []
      },
      {
        sid        = "PassJobRole"
        actions    = ["iam:PassRole"]
        resources  = [aws_iam_role.sagemaker.arn]
        conditions = [{ test = "StringEquals", variable = "iam:PassedToService", values = ["sagemaker.amazonaws.com"] }]
      },
    ]
    # the job's requests by the job index, each task's status.json
    on_job_state_change = [
      {
        sid        = "JobRequests"
        actions    = ["dynamodb:Query", "dynamodb:UpdateItem"]
        resources  = [local.requests_arn, "${local.requests_arn}/index/${local.job_index}"]
        conditions = []
      },
      {
        sid        = "ListCheckpoints"
        actions    = ["s3:ListBucket"]
        resources  = [local.bucket_arn]
        conditions = [{ test = "StringLike", variable = "s3:prefix", values = ["jobs/*"] }]
      },
      {
        sid        = "ReadStatus"
        actions    = ["s3:GetObject"]
        resources  = ["${local.bucket_arn}/jobs/*/checkpoints/*"]
        conditions = []
      },
      local.register_model,
    ]
    # read and complete one request; read the task's manifest.json and list its folder to check
    # that every file the manifest names is there with its size before it registers a model
    on_task_artifact = [
      { sid = "CompleteRequest", actions = ["dynamodb:GetItem", "dynamodb:UpdateItem"], resources = [local.requests_arn], conditions = [] },
      {
        sid        = "ReadManifest"
        actions    = ["s3:GetObject"]
        resources  = ["${local.bucket_arn}/models/*/manifest.json"]
        conditions = []
      },
      {
        sid        = "ListArtifacts"
        actions    = ["s3:ListBucket"]
        resources  = [local.bucket_arn]
        conditions = [{ test = "StringLike", variable = "s3:prefix", values = ["models/*"] }]
      },
      local.register_model,
    ]
    # the request of a job's task by the job index; its first preview recorded
    on_preview = [
      {
        sid        = "JobRequests"
        actions    = ["dynamodb:Query", "dynamodb:UpdateItem"]
        resources  = [local.requests_arn, "${local.requests_arn}/index/${local.job_index}"]
        conditions = []
      },
    ]
  }
  # With lifecycle events: published events leave the request's outbox (UpdateItem, which the
  # others have anyway); a redelivered upload reads its request back for events that may still
  # wait; the launcher sweeps the sparse outbox index and reads each request it finds.
  event_statements = {
    on_upload = [{ sid = "PendingEvents", actions = ["dynamodb:GetItem", "dynamodb:UpdateItem"], resources = [local.requests_arn], conditions = [] }]
    launch_pending = [
      { sid = "SweepEvents", actions = ["dynamodb:Scan"], resources = ["${local.requests_arn}/index/${local.outbox_index}"], conditions = [] },
      { sid = "PendingEvents", actions = ["dynamodb:GetItem"], resources = [local.requests_arn], conditions = [] },
    ]
  }
  statements = { for k, _ in local.handlers : k => concat(local.handler_statements[k],
  local.event_bus_arn != "" ? lookup(local.event_statements, k, []) : []) }
}

data "aws_iam_policy_document" "lambda_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "handler" {
  for_each           = local.handlers
  name               = "${local.function_names[each.key]}-lambda"
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "handler" {
  for_each = local.handlers

  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.handler[each.key].arn}:*"]
  }

  statement {
    sid       = "DeadLetters"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dead_letters.arn]
  }

  dynamic "statement" {
    for_each = var.tracing ? [1] : []
    content {
      sid       = "Tracing" # takes no resource ARN
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = local.vpc ? [1] : []
    content {
      sid = "VpcNetworkInterfaces" # what AWSLambdaVPCAccessExecutionRole grants; these take no resource ARNs
      actions = ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
      "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = local.kms
    content {
      sid       = "Key"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }

  # every function publishes its transitions' lifecycle events, to that bus only
  dynamic "statement" {
    for_each = local.event_bus_arn != "" ? [local.event_bus_arn] : []
    content {
      sid       = "LifecycleEvents"
      actions   = ["events:PutEvents"]
      resources = [statement.value]
    }
  }

  # what each function's own code path calls (local.statements)
  dynamic "statement" {
    for_each = local.statements[each.key]
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources
      dynamic "condition" {
        for_each = statement.value.conditions
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }
}

resource "aws_iam_role_policy" "handler" {
  for_each = local.handlers
  name     = "fanout-handler"
  role     = aws_iam_role.handler[each.key].id
  policy   = data.aws_iam_policy_document.handler[each.key].json
}

# The role the training jobs assume (FANOUT_ROLE_ARN).
data "aws_iam_policy_document" "sagemaker_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "${var.name_prefix}-training-job"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "sagemaker" {
  statement {
    sid     = "ReadInputs" # images (via the manifest), task lists, checkpoints after a restart
    actions = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/requests/*", "${local.bucket_arn}/jobs/*",
    "arn:${local.partition}:s3:::${local.model_bucket}/${local.model_prefix}/*"]
  }
  statement {
    sid       = "ListInputs"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["requests/*", "jobs/*"]
    }
  }
  statement {
    sid       = "ListBaseModel"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.model_bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.model_prefix}/*", local.model_prefix]
    }
  }
  statement {
    sid       = "WriteOutputs" # checkpoints and model.tar.gz under jobs/, per-task artifacts under models/
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/jobs/*", "${local.bucket_arn}/models/*"]
  }
  statement {
    sid       = "PullImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [local.image_repo_arn]
  }
  statement {
    sid       = "EcrLogin" # takes no resource ARN
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "JobLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/aws/sagemaker/TrainingJobs*"]
  }
  statement {
    sid       = "JobMetrics" # takes no resource ARN; limited to SageMaker's namespace
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/TrainingJobs"]
    }
  }
  dynamic "statement" {
    for_each = local.kms
    content {
      sid       = "Key" # output, volumes (CreateGrant) and SSE-KMS objects
      actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:CreateGrant"]
      resources = [statement.value]
    }
  }
  dynamic "statement" {
    for_each = local.vpc ? [1] : []
    content {
      sid = "VpcNetworkInterfaces" # SageMaker's documented VpcConfig actions; these take no resource ARNs
      actions = ["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface",
        "ec2:DeleteNetworkInterfacePermission", "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs",
      "ec2:DescribeDhcpOptions", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"]
      resources = ["*"]
    }
  }
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "fanout-training-job"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}
