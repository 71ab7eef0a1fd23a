# Inputs of the serverless stack. Defaults mirror fanout.settings.Settings where one exists.

variable "name_prefix" {
  description = "Prefix of every resource name (functions, roles, tables, rules, repository)."
  type        = string
  default     = "fanout"
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,29}$", var.name_prefix))
    error_message = "The name_prefix must be 1-30 characters of a-z, 0-9 and '-', starting with a letter or digit."
  }
}

variable "bucket_name" {
  description = "Bucket for requests/, jobs/ and models/ (empty: <name_prefix>-<account id>-<region>)."
  type        = string
  default     = ""
}

variable "force_destroy_bucket" {
  description = "Let `terraform destroy` delete a bucket that still holds objects (test stacks only)."
  type        = bool
  default     = false
}

variable "require_tls" {
  description = "Bucket policy denying every request that is not over TLS (the offline test turns it off: moto serves plain HTTP)."
  type        = bool
  default     = true
}

variable "image_uri" {
  description = "ECR URI of the training image (empty: <the created repository>:<image_tag>)."
  type        = string
  default     = ""
  validation {
    condition     = var.image_uri == "" || can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/[^:@]+[:@].+$", var.image_uri))
    error_message = "The image_uri must be an ECR image URI, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG (or @sha256:...)."
  }
}

variable "create_ecr_repository" {
  description = "Create the ECR repository <name_prefix>-trainer for the training image."
  type        = bool
  default     = true
}

variable "image_tag" {
  description = "Tag of the training image in the created repository, used when image_uri is empty (tags are immutable: push a new tag and apply to roll out an image)."
  type        = string
  default     = "1"
}

variable "base_model_uri" {
  description = "s3:// URI of the base diffusers pipeline folder (the jobs' `model` channel)."
  type        = string
  validation {
    condition     = can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+", var.base_model_uri))
    error_message = "The base_model_uri must be s3://BUCKET/PREFIX/ (the folder holding model_index.json)."
  }
}

variable "instance_type" {
  description = "Training instance type; the launcher may create jobs of this type only."
  type        = string
  default     = "ml.g5.xlarge"
}

variable "max_instances" {
  description = "Most instances in one job (K)."
  type        = number
  default     = 8
}

variable "max_tasks_per_job" {
  description = "Most requests one job trains; a larger backlog is split."
  type        = number
  default     = 64
}

variable "max_jobs_per_run" {
  description = "Most jobs one launch_pending run creates."
  type        = number
  default     = 4
}

variable "max_retries" {
  description = "Times a failed request goes back to PENDING before it is FAILED."
  type        = number
  default     = 2
}

variable "volume_size_gb" {
  description = "EBS volume per training instance (GB)."
  type        = number
  default     = 50
}

variable "max_runtime_s" {
  description = "StoppingCondition.MaxRuntimeInSeconds of each job."
  type        = number
  default     = 86400
}

variable "spot" {
  description = "Managed spot training."
  type        = bool
  default     = false
}

variable "hyperparameters" {
  description = "Job hyperparameters, e.g. { max_train_steps = 400 } (FANOUT_HYPERPARAMETERS)."
  type        = map(any)
  default     = {}
}

variable "launch_schedule" {
  description = "EventBridge schedule of launch_pending, e.g. rate(5 minutes)."
  type        = string
  default     = "rate(5 minutes)"
}

variable "kms_key_arn" {
  description = "KMS key for the tables, logs, Lambda environment, ECR, job output and volumes (empty: AWS managed keys)."
  type        = string
  default     = ""
}

variable "subnet_ids" {
  description = "VPC subnets for the Lambdas and the training jobs (with security_group_ids; empty: no VPC)."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "VPC security groups for the Lambdas and the training jobs (with subnet_ids)."
  type        = list(string)
  default     = []
  validation {
    condition     = length(var.security_group_ids) <= 5
    error_message = "SageMaker takes at most 5 security groups."
  }
}

variable "lambda_zip" {
  description = "Path of the Lambda code zip (`make lambda-zip` builds build/lambda/fanout.zip)."
  type        = string
}

variable "lambda_runtime" {
  description = "Lambda runtime (python3.12 for real stacks; provider 3.39 knows only up to python3.8)."
  type        = string
  default     = "python3.12"
}

variable "lambda_memory_mb" {
  description = "Memory of each function (MB)."
  type        = number
  default     = 256
}

variable "launch_timeout_s" {
  description = "Timeout of launch_pending (s); a claim is taken over 300 s after it."
  type        = number
  default     = 600
}

variable "log_retention_days" {
  description = "Retention of the functions' log groups (days)."
  type        = number
  default     = 365
}

variable "tracing" {
  description = "X-Ray active tracing on the functions (within the free tier at the default schedule)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags on every resource that takes them."
  type        = map(string)
  default     = {}
}

# --- lifecycle events, metrics, alarms, dashboard (docs/infra.md#events-metrics-alarms-and-the-dashboard)

variable "lifecycle_events" {
  description = "Publish every request state change to EventBridge (FANOUT_EVENT_BUS) for the SaaS app."
  type        = bool
  default     = true
}

variable "event_bus_name" {
  description = "Existing EventBridge bus (name, or ARN for another account's) to publish to; empty creates <name_prefix>-events."
  type        = string
  default     = ""
}

variable "max_quality_retries" {
  description = "Retrains of a request whose model failed its quality gate (on_quality_fail=retry) before it is NEEDS_REVIEW."
  type        = number
  default     = 1
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the handlers' embedded-metric-format metrics (dimension service = name_prefix)."
  type        = string
  default     = "Fanout"
}

variable "alarms" {
  description = "CloudWatch alarms on the pipeline, notifying an SNS topic (subscriptions are yours)."
  type        = bool
  default     = true
}

variable "alarm_topic_arn" {
  description = "Existing SNS topic for the alarms; empty creates <name_prefix>-alarms."
  type        = string
  default     = ""
}

variable "alarm_oldest_pending_minutes" {
  description = "Alarm when the oldest PENDING request has waited longer than this (minutes)."
  type        = number
  default     = 60
}

variable "alarm_failure_rate_percent" {
  description = "Alarm when more than this share of the requests that ended in an hour FAILED (percent)."
  type        = number
  default     = 20
}

variable "alarm_failure_min_requests" {
  description = "The failure-rate alarm looks only at hours with at least this many ended requests."
  type        = number
  default     = 10
}

variable "alarm_throttle_minutes" {
  description = "Alarm when CreateTrainingJob has been throttled in every 5-minute period for this long (minutes)."
  type        = number
  default     = 60
  validation {
    condition     = var.alarm_throttle_minutes >= 5 && var.alarm_throttle_minutes <= 1440
    error_message = "The alarm_throttle_minutes must be 5-1440 (CloudWatch evaluates at most a day of 5-minute periods)."
  }
}

variable "dashboard" {
  description = "A CloudWatch dashboard <name_prefix>-pipeline with the pipeline's numbers and the training jobs' metrics."
  type        = bool
  default     = true
}

# --- the optional inference endpoint (serve.tf, docs/serving.md) ------------------------------

variable "serve_endpoint" {
  description = "Create a SageMaker endpoint running the image's `serve` (one base per GPU, users' LoRAs hot-swapped in)."
  type        = bool
  default     = false
}

variable "serve_async" {
  description = "Make the endpoint asynchronous (S3 in, S3 out under serving/) instead of real-time."
  type        = bool
  default     = false
}

variable "serve_image_uri" {
  description = "Image of the endpoint (empty: the training image; the same image serves with `serve`)."
  type        = string
  default     = ""
}

variable "serve_instance_type" {
  description = "Instance type of the endpoint (one base pipeline per GPU of it)."
  type        = string
  default     = "ml.g5.xlarge"
}

variable "serve_min_instances" {
  description = "Fewest instances autoscaling keeps (also the initial count)."
  type        = number
  default     = 1
  validation {
    condition     = var.serve_min_instances >= 1
    error_message = "The serve_min_instances must be at least 1 (a real-time endpoint cannot scale to zero)."
  }
}

variable "serve_max_instances" {
  description = "Most instances autoscaling may run."
  type        = number
  default     = 4
}

variable "serve_invocations_per_instance" {
  description = "Autoscaling target: invocations per instance per minute (SageMakerVariantInvocationsPerInstance)."
  type        = number
  default     = 30
}

variable "serve_settings" {
  description = "Extra serve settings as SERVE_<NAME> = value, e.g. { SERVE_MAX_RANK = \"128\", SERVE_CACHE_SIZE = \"32\" }."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for k in keys(var.serve_settings) : can(regex("^SERVE_[A-Z_]+$", k))])
    error_message = "The serve_settings keys must be SERVE_<NAME> (python -m serve --help lists the names)."
  }
}
