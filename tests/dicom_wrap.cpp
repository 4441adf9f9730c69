// Test helper: wraps a grayscale image (e.g. an HC18 scan) into an Ultrasound Image Storage DICOM
// file whose Sequence of Ultrasound Regions calibrates the whole image at a given pixel size, so
// that tests can send a measurable head through DICOM paths without committing any such file.
//
//   dicom_wrap IMAGE PIXEL_SIZE_MM OUT.dcm [SOP_INSTANCE_UID [FRAMES]]   ("" for a new UID)
//   dicom_wrap --nested LEVELS OUT.dcm      (a file of LEVELS nested sequences: nested_sequences_dicom)
#include "dicom_wrap.h"

#include <opencv2/imgcodecs.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "--nested") {
        const std::string bytes = nested_sequences_dicom(std::atoi(argv[2]));
        std::ofstream out(argv[3], std::ios::binary);
        out.write(bytes.data(), std::streamsize(bytes.size()));
        return out ? 0 : 1;
    }
    if (argc < 4) {
        std::fprintf(stderr, "usage: dicom_wrap IMAGE PIXEL_SIZE_MM OUT.dcm [SOP_INSTANCE_UID]\n");
        return 2;
    }
    const cv::Mat img = cv::imread(argv[1], cv::IMREAD_GRAYSCALE);
    const double mm = std::atof(argv[2]);
    if (img.empty() || !(mm > 0)) {
        std::fprintf(stderr, "error: cannot read '%s' or bad pixel size\n", argv[1]);
        return 1;
    }
    DcmFileFormat file;
    build_wrapped_dicom(file, img, mm, argc > 5 ? std::atoi(argv[5]) : 1, argc > 4 ? argv[4] : "");
    const OFCondition c = file.saveFile(argv[3], EXS_LittleEndianExplicit);
    if (c.bad()) {
        std::fprintf(stderr, "error: cannot write '%s': %s\n", argv[3], c.text());
        return 1;
    }
    return 0;
}
