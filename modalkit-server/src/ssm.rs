//! The API key from AWS SSM Parameter Store (`auth_config.ssm_key`), read
//! once at start-up as modalkit does; SecureString parameters are decrypted.

use aws_config::SdkConfig;
use aws_sdk_ssm::error::DisplayErrorContext;

use crate::server::ServerError;

/// Reads parameter `name` with decryption.
pub(crate) async fn api_key_from_ssm(
    config: &SdkConfig,
    name: &str,
) -> Result<String, ServerError> {
    let client = aws_sdk_ssm::Client::new(config);
    let output = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|err| ServerError::ApiKeyFromSsm {
            parameter: name.to_owned(),
            reason: DisplayErrorContext(&err).to_string(),
        })?;
    output
        .parameter()
        .and_then(|p| p.value())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ServerError::ApiKeyFromSsm {
            parameter: name.to_owned(),
            reason: "the parameter has no value".to_owned(),
        })
}
