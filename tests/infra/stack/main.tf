# The root module the offline test applies to a moto server on 127.0.0.1: the provider's
# endpoints all point there, with the skip_* flags for what moto cannot answer. It runs
# hashicorp/aws 3.39.0 (the newest provider that installs here without network; see
# scripts/infra_tools.py), hence python3.8 as the runtime label.

terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "3.39.0"
    }
  }
}

variable "endpoint" {
  description = "The moto server, http://127.0.0.1:PORT"
  type        = string
  validation {
    condition     = can(regex("^http://127\\.0\\.0\\.1:[0-9]+$", var.endpoint))
    error_message = "The offline test talks to a moto server on 127.0.0.1 only."
  }
}

variable "lambda_zip" {
  type = string
}

# the module's options the test also plans switched off (test_stack.py)
variable "lifecycle_events" {
  type    = bool
  default = true
}

variable "monitoring" {
  type    = bool
  default = true
}

variable "serve_async" {
  description = "The endpoint's kind: the cycle applies the asynchronous one and plans the real-time one."
  type        = bool
  default     = true
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  skip_requesting_account_id  = true
  skip_get_ec2_platforms      = true
  s3_force_path_style         = true
  endpoints {
    applicationautoscaling = var.endpoint
    cloudformation         = var.endpoint
    cloudwatch             = var.endpoint
    cloudwatchevents       = var.endpoint
    cloudwatchlogs         = var.endpoint
    dynamodb               = var.endpoint
    ec2                    = var.endpoint
    ecr                    = var.endpoint
    iam                    = var.endpoint
    kms                    = var.endpoint
    lambda                 = var.endpoint
    s3                     = var.endpoint
    sagemaker              = var.endpoint
    sns                    = var.endpoint
    sqs                    = var.endpoint
    sts                    = var.endpoint
  }
}

# A network for the VPC inputs (the Lambdas and, through FANOUT_SUBNETS, the training jobs).
resource "aws_vpc" "test" {
  cidr_block = "10.42.0.0/16"
}

resource "aws_subnet" "test" {
  vpc_id     = aws_vpc.test.id
  cidr_block = "10.42.1.0/24"
}

resource "aws_security_group" "test" {
  name   = "fanout-test"
  vpc_id = aws_vpc.test.id
}

module "fanout" {
  source               = "../module"
  name_prefix          = "fanout-test"
  bucket_name          = "fanout-test-stack"
  force_destroy_bucket = true
  require_tls          = false # moto serves plain HTTP on 127.0.0.1; it enforces the policy, so it would deny every call
  base_model_uri       = "s3://fanout-test-stack/base/sd15/"
  instance_type        = "ml.g5.xlarge"
  max_instances        = 4
  hyperparameters      = { max_train_steps = 400 }
  subnet_ids           = [aws_subnet.test.id]
  security_group_ids   = [aws_security_group.test.id]
  lambda_zip           = var.lambda_zip
  lambda_runtime       = "python3.8"
  tags                 = { project = "fanout-test" }
  lifecycle_events     = var.lifecycle_events
  alarms               = var.monitoring
  dashboard            = var.monitoring
  # the optional inference endpoint, asynchronous (the CloudFormation endpoint configuration)
  serve_endpoint      = true
  serve_async         = var.serve_async
  serve_max_instances = 3
  serve_instance_type = "ml.g4dn.xlarge" # moto's list of endpoint instance types has no g5
  serve_settings      = { SERVE_MAX_RANK = "32" }
}

# The app's side of the lifecycle events (docs/fanout.md#lifecycle-events): a rule on the
# module's bus sending every `fanout` event to the app's queue, which lets EventBridge write.
resource "aws_sqs_queue" "app" {
  count = var.lifecycle_events ? 1 : 0
  name  = "fanout-test-app-events"
}

resource "aws_cloudwatch_event_rule" "app" {
  count          = var.lifecycle_events ? 1 : 0
  name           = "fanout-test-app"
  event_bus_name = module.fanout.event_bus
  event_pattern  = jsonencode({ source = ["fanout"] })
}

resource "aws_cloudwatch_event_target" "app" {
  count          = var.lifecycle_events ? 1 : 0
  rule           = aws_cloudwatch_event_rule.app[0].name
  event_bus_name = module.fanout.event_bus
  target_id      = "app-queue"
  arn            = aws_sqs_queue.app[0].arn
}

data "aws_iam_policy_document" "app_queue" {
  count = var.lifecycle_events ? 1 : 0
  statement {
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.app[0].arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.app[0].arn]
    }
  }
}

resource "aws_sqs_queue_policy" "app" {
  count     = var.lifecycle_events ? 1 : 0
  queue_url = aws_sqs_queue.app[0].id
  policy    = data.aws_iam_policy_document.app_queue[0].json
}

output "stack" {
  value = {
    bucket         = module.fanout.bucket
    requests_table = module.fanout.requests_table
    models_table   = module.fanout.models_table
    function_names = module.fanout.function_names
    function_arns  = module.fanout.function_arns
    sagemaker_role = module.fanout.sagemaker_role_arn
    image_uri      = module.fanout.image_uri
    environment    = module.fanout.environment
    subnet_id      = aws_subnet.test.id
    security_group = aws_security_group.test.id
    event_bus      = module.fanout.event_bus
    event_bus_arn  = module.fanout.event_bus_arn
    alarm_topic    = module.fanout.alarm_topic_arn
    dashboard      = module.fanout.dashboard_name
    app_queue      = join("", aws_sqs_queue.app[*].id)
    serve_endpoint = module.fanout.serve_endpoint_name
    serve_role     = module.fanout.serve_role_arn
  }
}

# known when planned (the stack output above is not, before apply): what the optional parts resolve to
output "planned_event_bus" {
  value = module.fanout.event_bus
}

output "planned_alarm_topic" {
  value = module.fanout.alarm_topic_arn
}
