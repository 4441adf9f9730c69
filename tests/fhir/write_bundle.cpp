// Writes a FHIR Bundle for the Node validator (validate_bundle.mjs): one measurement from a DICOM
// source (derivedFrom, subject, study date/time) and one from a PNG (no source).
// Usage: fhir_write_bundle OUT.json
#include "fetalhc/report.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: fhir_write_bundle OUT.json\n");
        return 2;
    }
    fetalhc::DicomHeader h;
    h.sop_class_uid = "1.2.840.10008.5.1.4.1.1.6.1";  // Ultrasound Image Storage
    h.sop_instance_uid = "2.25.301298017421098264817402938475610293847";
    h.study_instance_uid = "2.25.117283746502938475610293847561029384756";
    h.series_instance_uid = "2.25.229384756102938475610293847561029384756";
    h.patient_id = "FHC-0001";
    h.patient_name = "Doe^Jane";
    h.study_date = "20240315";
    h.study_time = "101500";

    fetalhc::Ellipse e{400, 270, 206, 160, 0.3};
    fetalhc::Measurement dicom_m = fetalhc::measurement_from_ellipse(e, 0.15, std::nullopt);
    dicom_m.source = "scan.dcm";
    fetalhc::Measurement png_m = fetalhc::measurement_from_ellipse(e, 0.12, std::nullopt);
    png_m.source = "scan.png";

    fetalhc::FhirOptions opt;
    opt.measured_at = "2024-03-15T10:20:00Z";
    nlohmann::json bundle = fetalhc::fhir_bundle({{dicom_m, h}, {png_m, std::nullopt}}, opt);
    std::ofstream f(argv[1]);
    f << bundle.dump(2) << "\n";
    if (!f) {
        std::fprintf(stderr, "error: cannot write '%s'\n", argv[1]);
        return 1;
    }
    return 0;
}
