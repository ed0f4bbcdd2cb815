"""Where AMD's Key Distribution Service serves what a verification needs and the evidence
lacks: the VCEK of a chip at a TCB, the ASK/ARK chain and the ARK's CRL. Reasons and hints
name these addresses; the verifier itself never fetches anything."""

from __future__ import annotations

from typing import Final

from cmcp_sev import structures as snp

KDS: Final = "https://kdsintf.amd.com"
VCEK_PATTERN: Final = (
    f"{KDS}/vcek/v1/<product>/<chip id hex>?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=.. "
    "(the report's chip id and reported TCB)"
)


def vcek_url(product: snp.Product, report: snp.Report) -> str:
    """Where AMD KDS serves the VCEK for this chip and reported TCB."""
    tcb = report.reported_tcb.decode(product)
    hwid = report.chip_id[:8] if product is snp.Product.TURIN else report.chip_id
    query = f"blSPL={tcb.bootloader}&teeSPL={tcb.tee}&snpSPL={tcb.snp}&ucodeSPL={tcb.microcode}"
    if tcb.fmc is not None:
        query = f"fmcSPL={tcb.fmc}&{query}"
    return f"{KDS}/vcek/v1/{product.value}/{hwid.hex()}?{query}"


def vcek_source(product: snp.Product | None, report: snp.Report | None) -> str:
    """Where to get the VCEK of this report and its chain: the exact addresses when the
    report and its product are known, else the general pattern."""
    if report is None or product is None:
        return f"AMD KDS, {VCEK_PATTERN}"
    try:
        url = vcek_url(product, report)
    except snp.ReportFormatError:  # the TCB is not in the product's layout
        return f"AMD KDS, {VCEK_PATTERN}"
    return f"{url} and its ASK/ARK from {KDS}/vcek/v1/{product.value}/cert_chain"


def crl_url(kind: str, product: snp.Product) -> str:
    """Where AMD KDS serves the ARK's CRL for a `kind` ("vcek" or "vlek") chain."""
    return f"{KDS}/{kind}/v1/{product.value}/crl"
