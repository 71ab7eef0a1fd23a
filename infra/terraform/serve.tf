# The optional inference endpoint (serve_endpoint = true): the image's `serve` over one base per
# GPU, each request's user LoRA hot-swapped in (docs/serving.md). Real-time, or asynchronous
# with S3 output under serving/. Autoscaling tracks invocations per instance.
#
# The asynchronous endpoint configuration is a CloudFormation AWS::SageMaker::EndpointConfig:
# aws_sagemaker_endpoint_configuration learned async_inference_config after provider 3.39, the
# version the offline test runs, and the module supports 3.39 through 6.x.

locals {
  serve             = var.serve_endpoint ? 1 : 0
  serve_name        = "${var.name_prefix}-serve"
  serve_image       = var.serve_image_uri != "" ? var.serve_image_uri : local.image_uri
  serve_async       = "s3://${local.bucket}/serving/async-out/"
  serve_fail        = "s3://${local.bucket}/serving/async-failures/"
  serve_image_parts = regex("^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com(?:\\.cn)?/([^:@]+)", local.serve_image)
  serve_image_repo  = "arn:${local.partition}:ecr:${local.serve_image_parts[1]}:${local.serve_image_parts[0]}:repository/${local.serve_image_parts[2]}"
  # serve.config.ServeConfig names (scripts/check_stack.py parses them back with ServeConfig.from_env)
  serve_environment = merge({
    SERVE_BASE_MODEL   = var.base_model_uri # downloaded once into the cache folder at start
    SERVE_MODELS_URI   = "s3://${local.bucket}/models/"
    SERVE_MODELS_TABLE = local.models_table
    SERVE_REGION       = local.region
    SERVE_CACHE_DIR    = "/tmp/lora-serve"
  }, var.serve_settings)
  serve_config_name = var.serve_async ? (local.serve == 1 ? aws_cloudformation_stack.serve_async[0].outputs["Name"] : "") : (local.serve == 1 ? aws_sagemaker_endpoint_configuration.serve[0].name : "")
}

data "aws_iam_policy_document" "serve" {
  statement {
    sid       = "ReadModels" # users' LoRAs and manifests; the base, once at start
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/models/*", "arn:${local.partition}:s3:::${local.model_bucket}/${local.model_prefix}/*"]
  }
  statement {
    sid       = "ListModels" # a missing model is then a 404, not a 403
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["models/*"]
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
    sid       = "ModelIds" # <user_id>/<model_id> requests
    actions   = ["dynamodb:GetItem"]
    resources = [local.models_arn]
  }
  dynamic "statement" {
    for_each = var.serve_async ? [1] : []
    content {
      sid       = "AsyncOutputs"
      actions   = ["s3:PutObject"]
      resources = ["${local.bucket_arn}/serving/*"]
    }
  }
  statement {
    sid       = "PullImage"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [local.serve_image_repo]
  }
  statement {
    sid       = "EcrLogin" # takes no resource ARN
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "EndpointLogs"
    actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${local.region}:${local.account}:log-group:/aws/sagemaker/Endpoints/${local.serve_name}*"]
  }
  statement {
    sid       = "EndpointMetrics" # takes no resource ARN; limited to SageMaker's namespace
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/Endpoints"]
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

resource "aws_iam_role" "serve" {
  count              = local.serve
  name               = "${local.serve_name}-endpoint"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "serve" {
  count  = local.serve
  name   = "fanout-serve"
  role   = aws_iam_role.serve[0].id
  policy = data.aws_iam_policy_document.serve.json
}

resource "aws_sagemaker_model" "serve" {
  count              = local.serve
  name               = local.serve_name
  execution_role_arn = aws_iam_role.serve[0].arn
  primary_container {
    image       = local.serve_image
    environment = local.serve_environment
  }
  dynamic "vpc_config" {
    for_each = local.vpc ? [1] : []
    content {
      subnets            = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }
  tags       = var.tags
  depends_on = [aws_iam_role_policy.serve]
}

resource "aws_sagemaker_endpoint_configuration" "serve" {
  count       = var.serve_endpoint && !var.serve_async ? 1 : 0
  name        = "${local.serve_name}-realtime"
  kms_key_arn = var.kms_key_arn != "" ? var.kms_key_arn : null
  production_variants {
    variant_name           = "AllTraffic"
    model_name             = aws_sagemaker_model.serve[0].name
    instance_type          = var.serve_instance_type
    initial_instance_count = var.serve_min_instances
  }
  tags = var.tags
}

resource "aws_cloudformation_stack" "serve_async" {
  count = var.serve_endpoint && var.serve_async ? 1 : 0
  name  = "${local.serve_name}-async"
  template_body = jsonencode({
    Resources = {
      Config = {
        Type = "AWS::SageMaker::EndpointConfig"
        Properties = merge({
          EndpointConfigName = "${local.serve_name}-async"
          ProductionVariants = [{
            VariantName          = "AllTraffic"
            ModelName            = aws_sagemaker_model.serve[0].name
            InstanceType         = var.serve_instance_type
            InitialInstanceCount = var.serve_min_instances
            InitialVariantWeight = 1
          }]
          AsyncInferenceConfig = {
            OutputConfig = merge({ S3OutputPath = local.serve_async, S3FailurePath = local.serve_fail },
            var.kms_key_arn != "" ? { KmsKeyId = var.kms_key_arn } : {})
            ClientConfig = { MaxConcurrentInvocationsPerInstance = 4 }
          }
        }, var.kms_key_arn != "" ? { KmsKeyId = var.kms_key_arn } : {})
      }
    }
    Outputs = { Name = { Value = { "Fn::GetAtt" = ["Config", "EndpointConfigName"] } } }
  })
  tags = var.tags
}

resource "aws_sagemaker_endpoint" "serve" {
  count                = local.serve
  name                 = local.serve_name
  endpoint_config_name = local.serve_config_name
  tags                 = var.tags
}

# Scale the variant on invocations per instance (SageMaker's own metric; no custom metrics).
resource "aws_appautoscaling_target" "serve" {
  count              = local.serve
  service_namespace  = "sagemaker"
  resource_id        = "endpoint/${aws_sagemaker_endpoint.serve[0].name}/variant/AllTraffic"
  scalable_dimension = "sagemaker:variant:DesiredInstanceCount"
  min_capacity       = var.serve_min_instances
  max_capacity       = var.serve_max_instances
}

resource "aws_appautoscaling_policy" "serve" {
  count              = local.serve
  name               = "${local.serve_name}-invocations"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.serve[0].service_namespace
  resource_id        = aws_appautoscaling_target.serve[0].resource_id
  scalable_dimension = aws_appautoscaling_target.serve[0].scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = var.serve_invocations_per_instance
    scale_in_cooldown  = 300
    scale_out_cooldown = 60
    predefined_metric_specification {
      predefined_metric_type = "SageMakerVariantInvocationsPerInstance"
    }
  }
}
