// Test helper shared by test_dicom and the fuzz seeds: an image encoded as a JPEG 2000 codestream
// with OpenJPEG's encoder, in memory, so that JPEG 2000 DICOM files are made inside the tests
// (no image file is committed).
#pragma once

#include <openjpeg.h>
#include <opencv2/core.hpp>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace j2k_test {

struct EncodeOptions {
    bool reversible = true;  // 5/3 wavelet, lossless; false: 9/7 irreversible at `ratio`
    float ratio = 10;        // compression ratio of the irreversible form
    int precision = 0;       // bits per sample; 0: the Mat's (8 or 16)
    bool mct = true;         // colour: the multi-component transform (DICOM's YBR_RCT / YBR_ICT)
    int tile = 0;            // tile width and height; 0: one tile
    bool jp2 = false;        // the codestream inside a JP2 file (signature, header and jp2c boxes)
};

namespace detail {

struct Sink {
    std::vector<unsigned char> bytes;
    size_t pos = 0;
    void reach(size_t end) {
        if (end > bytes.size()) bytes.resize(end);
    }
};

inline OPJ_SIZE_T sink_write(void* buffer, OPJ_SIZE_T n, void* user) {
    auto* s = static_cast<Sink*>(user);
    s->reach(s->pos + n);
    std::memcpy(s->bytes.data() + s->pos, buffer, n);
    s->pos += n;
    return n;
}
inline OPJ_OFF_T sink_skip(OPJ_OFF_T n, void* user) {
    auto* s = static_cast<Sink*>(user);
    if (n < 0 && size_t(-n) > s->pos) return -1;
    s->pos = size_t(OPJ_OFF_T(s->pos) + n);
    s->reach(s->pos);
    return n;
}
inline OPJ_BOOL sink_seek(OPJ_OFF_T at, void* user) {
    auto* s = static_cast<Sink*>(user);
    if (at < 0) return OPJ_FALSE;
    s->pos = size_t(at);
    s->reach(s->pos);
    return OPJ_TRUE;
}

}  // namespace detail

// `img`: CV_8UC1, CV_16UC1, CV_16SC1 (signed components) or CV_8UC3 in R, G, B order. Returns the
// codestream (SOC ... EOC; or the JP2 file), empty when OpenJPEG refuses.
inline std::vector<unsigned char> encode_j2k(const cv::Mat& img, const EncodeOptions& o = {}) {
    const int comps = img.channels(), depth = img.depth();
    const int prec = o.precision ? o.precision : (depth == CV_8U ? 8 : 16);
    std::vector<opj_image_cmptparm_t> parms(static_cast<size_t>(comps));
    for (auto& p : parms) {
        std::memset(&p, 0, sizeof p);
        p.dx = p.dy = 1;
        p.w = OPJ_UINT32(img.cols);
        p.h = OPJ_UINT32(img.rows);
        p.prec = OPJ_UINT32(prec);
        p.sgnd = depth == CV_16S;
    }
    std::unique_ptr<opj_image_t, void (*)(opj_image_t*)> image(
        opj_image_create(OPJ_UINT32(comps), parms.data(), comps == 3 ? OPJ_CLRSPC_SRGB : OPJ_CLRSPC_GRAY), opj_image_destroy);
    if (!image) return {};
    image->x0 = image->y0 = 0;
    image->x1 = OPJ_UINT32(img.cols);
    image->y1 = OPJ_UINT32(img.rows);
    for (int c = 0; c < comps; ++c)
        for (int y = 0; y < img.rows; ++y)
            for (int x = 0; x < img.cols; ++x) {
                OPJ_INT32 v = 0;
                if (depth == CV_8U) v = img.ptr<uchar>(y)[x * comps + c];
                else if (depth == CV_16U) v = img.ptr<uint16_t>(y)[x * comps + c];
                else v = img.ptr<int16_t>(y)[x * comps + c];
                image->comps[c].data[size_t(y) * size_t(img.cols) + size_t(x)] = v;
            }

    opj_cparameters_t p;
    opj_set_default_encoder_parameters(&p);
    p.tcp_numlayers = 1;
    p.tcp_rates[0] = o.reversible ? 0 : o.ratio;
    p.cp_disto_alloc = 1;
    p.irreversible = o.reversible ? 0 : 1;
    p.tcp_mct = comps == 3 && o.mct ? 1 : 0;
    const int side = std::min(o.tile ? o.tile : std::min(img.cols, img.rows), std::min(img.cols, img.rows));
    p.numresolution = 1;
    while (p.numresolution < 6 && (1 << p.numresolution) <= side) ++p.numresolution;  // each level halves the tile
    if (o.tile) {
        p.tile_size_on = OPJ_TRUE;
        p.cp_tdx = p.cp_tdy = o.tile;
    }
    detail::Sink sink;  // outlives the stream that writes to it
    std::unique_ptr<opj_codec_t, void (*)(opj_codec_t*)> codec(opj_create_compress(o.jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K),
                                                                opj_destroy_codec);
    std::unique_ptr<opj_stream_t, void (*)(opj_stream_t*)> stream(opj_stream_create(1 << 16, OPJ_FALSE),
                                                                  opj_stream_destroy);
    if (!codec || !stream || !opj_setup_encoder(codec.get(), &p, image.get())) return {};
    opj_stream_set_user_data(stream.get(), &sink, nullptr);
    opj_stream_set_write_function(stream.get(), detail::sink_write);
    opj_stream_set_skip_function(stream.get(), detail::sink_skip);
    opj_stream_set_seek_function(stream.get(), detail::sink_seek);
    if (!opj_start_compress(codec.get(), image.get(), stream.get()) || !opj_encode(codec.get(), stream.get()) ||
        !opj_end_compress(codec.get(), stream.get()))
        return {};
    return sink.bytes;
}

}  // namespace j2k_test
