# Four functions from one zip (fanout/ only: boto3 comes with the Lambda runtime), each with
# its own role (iam.tf), log group and trigger.

resource "aws_cloudwatch_log_group" "handler" {
  for_each          = local.handlers
  name              = "/aws/lambda/${local.function_names[each.key]}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn != "" ? var.kms_key_arn : null
  tags              = var.tags
}

# S3 and EventBridge invoke asynchronously: an invocation that still fails after Lambda's two
# retries (a job's end whose status files could not be read, say) is sent here with its error
# for replay, instead of being dropped with its requests left LAUNCHED. Per-item failures
# never get here: the handlers record them.
resource "aws_sqs_queue" "dead_letters" {
  name                      = "${var.name_prefix}-dead-letters"
  message_retention_seconds = 1209600
  kms_master_key_id         = var.kms_key_arn != "" ? var.kms_key_arn : null
  tags                      = var.tags
}

resource "aws_lambda_function" "handler" {
  #checkov:skip=CKV_AWS_116:failed asynchronous invocations go to the SQS queue through an on-failure destination (aws_lambda_function_event_invoke_config below), which also records the error
  #checkov:skip=CKV_AWS_272:code signing needs an AWS Signer profile and signed zips; the zip is built from the repository and pinned by source_code_hash
  for_each         = local.handlers
  function_name    = local.function_names[each.key]
  handler          = each.value
  runtime          = var.lambda_runtime
  role             = aws_iam_role.handler[each.key].arn
  filename         = var.lambda_zip
  source_code_hash = filebase64sha256(var.lambda_zip)
  memory_size      = var.lambda_memory_mb
  timeout          = local.timeouts[each.key]
  kms_key_arn      = var.kms_key_arn != "" ? var.kms_key_arn : null
  # One launcher at a time keeps the account at fanout's 1 CreateTrainingJob/s (the limiter
  # is per process); the others may run as wide as events arrive.
  reserved_concurrent_executions = each.key == "launch_pending" ? 1 : -1

  environment {
    variables = local.environment
  }

  tracing_config {
    mode = var.tracing ? "Active" : "PassThrough"
  }

  dynamic "vpc_config" {
    for_each = local.vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.handler, aws_iam_role_policy.handler]

  lifecycle {
    precondition {
      condition     = (length(var.subnet_ids) == 0) == (length(var.security_group_ids) == 0)
      error_message = "Set subnet_ids and security_group_ids together (SageMaker's VpcConfig needs both), or neither."
    }
  }
}

resource "aws_lambda_function_event_invoke_config" "handler" {
  for_each               = local.handlers
  function_name          = aws_lambda_function.handler[each.key].function_name
  maximum_retry_attempts = 2
  destination_config {
    on_failure {
      destination = aws_sqs_queue.dead_letters.arn
    }
  }
}

resource "aws_lambda_permission" "s3" {
  for_each       = toset(["on_upload", "on_task_artifact", "on_preview"])
  statement_id   = "s3-${aws_s3_bucket.data.id}"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.handler[each.key].function_name
  principal      = "s3.amazonaws.com"
  source_arn     = aws_s3_bucket.data.arn
  source_account = local.account
}

resource "aws_cloudwatch_event_rule" "launch_schedule" {
  name                = "${var.name_prefix}-launch-pending"
  description         = "Wakes launch_pending; the requests table is the queue."
  schedule_expression = var.launch_schedule
  tags                = var.tags
}

# Terminal states only, and only this stack's jobs (fanout names them <job_prefix>-<digest>).
resource "aws_cloudwatch_event_rule" "job_state" {
  name        = "${var.name_prefix}-job-state"
  description = "SageMaker training jobs of this stack that ended."
  event_pattern = jsonencode({
    source        = ["aws.sagemaker"]
    "detail-type" = ["SageMaker Training Job State Change"]
    detail = {
      TrainingJobStatus = ["Completed", "Failed", "Stopped"]
      TrainingJobName   = [{ prefix = "${local.job_prefix}-" }]
    }
  })
  tags = var.tags
}

locals {
  rules = {
    launch_pending      = aws_cloudwatch_event_rule.launch_schedule
    on_job_state_change = aws_cloudwatch_event_rule.job_state
  }
}

resource "aws_cloudwatch_event_target" "handler" {
  for_each  = local.rules
  rule      = each.value.name
  target_id = local.function_names[each.key]
  arn       = aws_lambda_function.handler[each.key].arn
}

resource "aws_lambda_permission" "events" {
  for_each      = local.rules
  statement_id  = "events-${each.value.name}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.handler[each.key].function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value.arn
}
