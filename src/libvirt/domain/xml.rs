//! The domain XML's elements as serde structs. Field order is element
//! order; `@` marks an attribute and `$text` the element's text.

use serde::Serialize;

#[derive(Serialize)]
pub(super) struct Domain<'a> {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    pub(super) name: &'a str,
    pub(super) memory: Memory,
    pub(super) vcpu: u32,
    pub(super) os: Os<'a>,
    pub(super) features: Features,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cpu: Option<Cpu>,
    pub(super) on_poweroff: &'static str,
    pub(super) on_reboot: &'static str,
    pub(super) on_crash: &'static str,
    pub(super) devices: Devices<'a>,
}

#[derive(Serialize)]
pub(super) struct Memory {
    #[serde(rename = "@unit")]
    pub(super) unit: &'static str,
    #[serde(rename = "$text")]
    pub(super) value: u64,
}

#[derive(Serialize)]
pub(super) struct Os<'a> {
    #[serde(rename = "type")]
    pub(super) os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) kernel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) initrd: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) cmdline: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) boot: Option<BootDev>,
}

#[derive(Serialize)]
pub(super) struct OsType {
    #[serde(rename = "@arch")]
    pub(super) arch: &'static str,
    #[serde(rename = "@machine")]
    pub(super) machine: &'static str,
    #[serde(rename = "$text")]
    pub(super) value: &'static str,
}

#[derive(Serialize)]
pub(super) struct BootDev {
    #[serde(rename = "@dev")]
    pub(super) dev: &'static str,
}

/// ACPI is required: graceful shutdown presses the ACPI power button.
#[derive(Serialize)]
pub(super) struct Features {
    pub(super) acpi: (),
}

#[derive(Serialize)]
pub(super) struct Cpu {
    #[serde(rename = "@mode")]
    pub(super) mode: &'static str,
}

#[derive(Serialize)]
pub(super) struct Devices<'a> {
    pub(super) disk: Vec<DiskXml<'a>>,
    pub(super) controller: Vec<Controller>,
    pub(super) interface: Interface<'a>,
    pub(super) serial: Serial,
    pub(super) console: Console,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) graphics: Option<Graphics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) video: Option<Video>,
    pub(super) memballoon: ModelAttr,
    pub(super) rng: Rng,
}

#[derive(Serialize)]
pub(super) struct DiskXml<'a> {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    #[serde(rename = "@device")]
    pub(super) device: &'static str,
    pub(super) driver: Driver,
    pub(super) source: FileSource<'a>,
    pub(super) target: Target,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) readonly: Option<()>,
}

#[derive(Serialize)]
pub(super) struct Driver {
    #[serde(rename = "@name")]
    pub(super) name: &'static str,
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
}

#[derive(Serialize)]
pub(super) struct FileSource<'a> {
    #[serde(rename = "@file")]
    pub(super) file: &'a str,
}

#[derive(Serialize)]
pub(super) struct Target {
    #[serde(rename = "@dev")]
    pub(super) dev: String,
    #[serde(rename = "@bus")]
    pub(super) bus: &'static str,
}

#[derive(Serialize)]
pub(super) struct Controller {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    #[serde(rename = "@model")]
    pub(super) model: &'static str,
}

/// A tap on vmpod's bridge. No `<target dev>`: libvirt names taps `vnetN`
/// itself and ignores a requested name.
#[derive(Serialize)]
pub(super) struct Interface<'a> {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    pub(super) source: BridgeSource<'a>,
    pub(super) mac: MacAddress,
    pub(super) model: TypeAttr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) mtu: Option<Mtu>,
}

#[derive(Serialize)]
pub(super) struct BridgeSource<'a> {
    #[serde(rename = "@bridge")]
    pub(super) bridge: &'a str,
}

#[derive(Serialize)]
pub(super) struct MacAddress {
    #[serde(rename = "@address")]
    pub(super) address: String,
}

#[derive(Serialize)]
pub(super) struct Mtu {
    #[serde(rename = "@size")]
    pub(super) size: u32,
}

#[derive(Serialize)]
pub(super) struct TypeAttr {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
}

#[derive(Serialize)]
pub(super) struct ModelAttr {
    #[serde(rename = "@model")]
    pub(super) model: &'static str,
}

#[derive(Serialize)]
pub(super) struct Serial {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    pub(super) log: Log,
    pub(super) target: SerialTarget,
}

#[derive(Serialize)]
pub(super) struct SerialTarget {
    #[serde(rename = "@port")]
    pub(super) port: u32,
}

/// The console is the same device as the first serial port (libvirt merges
/// a serial-type console with serial port 0).
#[derive(Serialize)]
pub(super) struct Console {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    pub(super) log: Log,
    pub(super) target: ConsoleTarget,
}

#[derive(Serialize)]
pub(super) struct ConsoleTarget {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    #[serde(rename = "@port")]
    pub(super) port: u32,
}

#[derive(Serialize)]
pub(super) struct Log {
    #[serde(rename = "@file")]
    pub(super) file: String,
    #[serde(rename = "@append")]
    pub(super) append: &'static str,
}

#[derive(Serialize)]
pub(super) struct Graphics {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    #[serde(rename = "@port")]
    pub(super) port: u16,
    #[serde(rename = "@autoport")]
    pub(super) autoport: &'static str,
    #[serde(rename = "@passwd", skip_serializing_if = "Option::is_none")]
    pub(super) passwd: Option<String>,
    pub(super) listen: Listen,
}

#[derive(Serialize)]
pub(super) struct Listen {
    #[serde(rename = "@type")]
    pub(super) kind: &'static str,
    #[serde(rename = "@address")]
    pub(super) address: &'static str,
}

#[derive(Serialize)]
pub(super) struct Video {
    pub(super) model: TypeAttr,
}

#[derive(Serialize)]
pub(super) struct Rng {
    #[serde(rename = "@model")]
    pub(super) model: &'static str,
    pub(super) backend: RngBackend,
}

#[derive(Serialize)]
pub(super) struct RngBackend {
    #[serde(rename = "@model")]
    pub(super) model: &'static str,
    #[serde(rename = "$text")]
    pub(super) device: &'static str,
}
